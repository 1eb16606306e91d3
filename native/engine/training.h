// Optimizer rules every architecture shares (Hugging Face TrainingArguments
// semantics), so the BERT and Llama engines cannot drift apart.
#pragma once
#include "engine/engine.h"

namespace nt {

// Throws EngineError naming the field when a TrainConfig value is out of range
// (betas in [0, 1), epsilon > 0, weight decay >= 0, label smoothing in [0, 1],
// max_grad_norm a number, threads >= 0, class weights finite and >= 0).
void validate_train_config(const TrainConfig& tc);

// torch.nn.utils.clip_grad_norm_: the factor min(1, max_norm / (norm + 1e-6))
// the gradients are multiplied by; 1 when max_norm <= 0 (clipping off).
float clip_scale(float norm, float max_norm);

}  // namespace nt
