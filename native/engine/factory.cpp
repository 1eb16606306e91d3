#include "engine/factory.h"

#include "cpu/onednn.h"
#include "models/llama.h"

#ifdef NODETUNE_WITH_CUDA
#include "cuda/engine_cuda.h"
#include "cuda/llama_cuda.h"
#endif

namespace nt {

DeviceSpec parse_device(const std::string& device, const std::string& precision, bool causal_lm) {
    DeviceSpec d;
    d.precision = precision;
    if (precision != "fp32" && precision != "bf16" && precision != "q8_0")
        throw EngineError("precision '" + precision + "' is not supported: expected 'fp32', 'bf16' or 'q8_0'");
    if (precision == "q8_0" && !causal_lm)
        throw EngineError("precision 'q8_0' is for causal LMs' generation: the encoder engines run in fp32 (or bf16 on CUDA)");
    if (device == "cpu") {
        if (precision != "fp32" && !causal_lm)
            throw EngineError("precision 'bf16' needs device 'cuda': the CPU encoder engine trains in fp32");
        return d;
    }
    if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
        if (precision == "q8_0")
            throw EngineError("precision 'q8_0' runs on the CPU only: on device '" + device + "' use 'bf16' or 'fp32'");
        d.kind = "cuda";
        if (device.size() > 4) {  // "cuda:" and a number
            const std::string n = device.substr(5);
            if (n.empty() || n.size() > 9 || n.find_first_not_of("0123456789") != std::string::npos)
                throw EngineError("device '" + device + "': expected 'cuda:N' with N a device number");
            d.index = std::stoi(n);
        }
        return d;
    }
    throw EngineError("unknown device '" + device + "': expected 'cpu', 'cuda' or 'cuda:N'");
}

bool cuda_compiled() {
#ifdef NODETUNE_WITH_CUDA
    return true;
#else
    return false;
#endif
}

DeviceSpec check_device(const std::string& device, const std::string& precision, bool causal_lm) {
    DeviceSpec d = parse_device(device, precision, causal_lm);
    if (d.kind == "cpu" && d.precision == "bf16") {
        const std::string why = bf16_gemm_support();
        if (!why.empty()) throw EngineError("precision 'bf16' on the CPU: " + why);
    }
    if (d.kind == "cuda" && !cuda_compiled())
        throw EngineError("device 'cuda' was requested, but this build of nodetune has no CUDA backend: "
                          "rebuild on a machine with a CUDA toolkit (see README, 'CUDA')");
    return d;
}

std::unique_ptr<EngineBase> make_engine(const BertConfig& config, const TrainConfig& train, const DeviceSpec& device) {
    if (device.kind == "cpu") return std::make_unique<CpuEngine>(config, train);
    check_device("cuda", device.precision);  // throws without the CUDA backend
    if (config.masked_lm)
        throw EngineError("device '" + device.kind + "': BertForMaskedLM runs on the CPU only in this build "
                          "(the CUDA engine has the sequence-classification head only)");
#ifdef NODETUNE_WITH_CUDA
    return cuda::make_cuda_engine(config, train, device.index, device.precision == "bf16");
#else
    return nullptr;  // unreachable: check_device threw
#endif
}

std::unique_ptr<CausalLM> make_causal_lm(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train,
                                      const DeviceSpec& device, bool gradient_checkpointing, bool trainable) {
    if (device.kind != "cpu") {
        check_device("cuda", device.precision, true);  // throws without the CUDA backend
#ifdef NODETUNE_WITH_CUDA
        return cuda::make_cuda_causal_lm(config, lora, train, device.index, device.precision == "bf16",
                                         gradient_checkpointing, trainable);
#endif
    }
    const auto base = device.precision == "bf16"   ? LlamaEngine::BaseWeights::bf16
                      : device.precision == "q8_0" ? LlamaEngine::BaseWeights::q8_0
                                                   : LlamaEngine::BaseWeights::fp32;
    return std::make_unique<LlamaEngine>(config, lora, train, gradient_checkpointing, base, trainable);
}

}  // namespace nt
