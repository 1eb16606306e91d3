{
  "variables": {
    "with_dnnl": "<!(test -f /usr/include/oneapi/dnnl/dnnl.hpp && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "nodetune",
      "sources": [
        "native/binding/addon.cpp",
        "native/engine/engine.cpp",
        "native/engine/factory.cpp",
        "native/engine/distributed.cpp",
        "native/engine/training.cpp",
        "native/models/llama.cpp",
        "native/cpu/attention.cpp",
        "native/cpu/causal_attention.cpp",
        "native/cpu/crossentropy.cpp",
        "native/cpu/dropout.cpp",
        "native/cpu/embedding.cpp",
        "native/cpu/gelu.cpp",
        "native/cpu/gemm.cpp",
        "native/cpu/onednn.cpp",
        "native/cpu/layernorm.cpp",
        "native/cpu/linear.cpp",
        "native/cpu/lmhead_crossentropy.cpp",
        "native/cpu/lora.cpp",
        "native/cpu/optimizer.cpp",
        "native/cpu/q8_0.cpp",
        "native/cpu/rmsnorm.cpp",
        "native/cpu/rope.cpp",
        "native/cpu/swiglu.cpp",
        "native/cpu/tanh.cpp"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native",
        "/usr/include/x86_64-linux-gnu/openblas-openmp"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fopenmp", "-fno-math-errno", "-march=x86-64-v3", "-fexceptions"],
      "conditions": [
        ["with_dnnl==1", {
          "defines": ["NODETUNE_WITH_DNNL"],
          "libraries": ["-ldnnl"]
        }]
      ],
      "libraries": ["-lopenblas", "-fopenmp"]
    },
    {
      "target_name": "nodetune_gradcheck",
      "type": "executable",
      "sources": [
        "native/test/gradcheck.cpp",
        "native/cpu/attention.cpp",
        "native/cpu/causal_attention.cpp",
        "native/cpu/crossentropy.cpp",
        "native/cpu/dropout.cpp",
        "native/cpu/embedding.cpp",
        "native/cpu/gelu.cpp",
        "native/cpu/gemm.cpp",
        "native/cpu/onednn.cpp",
        "native/cpu/layernorm.cpp",
        "native/cpu/linear.cpp",
        "native/cpu/lmhead_crossentropy.cpp",
        "native/cpu/lora.cpp",
        "native/cpu/optimizer.cpp",
        "native/cpu/q8_0.cpp",
        "native/cpu/rmsnorm.cpp",
        "native/cpu/rope.cpp",
        "native/cpu/swiglu.cpp",
        "native/cpu/tanh.cpp"
      ],
      "include_dirs": ["native", "/usr/include/x86_64-linux-gnu/openblas-openmp"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O2", "-fopenmp", "-march=x86-64-v3", "-fexceptions"],
      "conditions": [
        ["with_dnnl==1", {
          "defines": ["NODETUNE_WITH_DNNL"],
          "libraries": ["-ldnnl"]
        }]
      ],
      "libraries": ["-lopenblas", "-fopenmp"]
    }
  ]
}
