// Picks the engine for a device: "cpu", or "cuda" / "cuda:N" when the addon
// was built with a CUDA toolkit (NODETUNE_WITH_CUDA).
#pragma once
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/model.h"

namespace nt {

struct DeviceSpec {
    std::string kind = "cpu";       // "cpu" | "cuda"
    int index = 0;                  // CUDA device ordinal
    std::string precision = "fp32"; // "fp32" | "bf16" (CUDA; on the CPU a causal LM's frozen base only)
                                    // | "q8_0" (a causal LM's frozen base on the CPU, for generation)
};

// Parses "cpu", "cuda", "cuda:1"; throws EngineError otherwise. causal_lm:
// for a Llama-family engine, whose CPU engine can hold a frozen base in bf16.
DeviceSpec parse_device(const std::string& device, const std::string& precision, bool causal_lm = false);

// parse_device, plus: CUDA requested from a build without the CUDA backend,
// or bf16 on a CPU or build without bf16 GEMMs, throws EngineError. What can
// be known about a device before an engine exists (whether a GPU and driver
// are present is known only by make_engine).
DeviceSpec check_device(const std::string& device, const std::string& precision, bool causal_lm = false);

// Throws EngineError when the device is unknown, not compiled in, or absent.
std::unique_ptr<EngineBase> make_engine(const BertConfig& config, const TrainConfig& train, const DeviceSpec& device);

struct LlamaConfig;  // models/llama.h
struct LoraConfig;
// A Llama-family causal LM: models/llama.h on the CPU, cuda/llama_cuda.h on
// a GPU (EngineError from a build without the CUDA backend).
std::unique_ptr<CausalLM> make_causal_lm(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train,
                                      const DeviceSpec& device, bool gradient_checkpointing, bool trainable = true);

// True when this build includes the CUDA backend.
bool cuda_compiled();

}  // namespace nt
