// The rules every architecture shares (Hugging Face TrainingArguments and
// batch semantics), so the BERT and Llama engines cannot drift apart.
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

// A batch's size: B, T >= 1, B × T at most 2^31 - 1 tokens (the kernels index
// rows with an int), T <= max_position_embeddings. Throws EngineError.
void check_batch_size(const Batch& b, int max_position_embeddings);

// "input_ids[b][t]" for element i of a (B, T) tensor, for error messages.
std::string batch_where(const char* tensor, size_t i, int T);

// Throws EngineError naming tensor[b][t] when id is not in [0, vocab_size).
void check_token_id(const char* tensor, size_t i, int T, int32_t id, int vocab_size);

// Per-token labels of a language model (masked or causal): each -100 (no loss
// there) or a token id in [0, vocab_size); throws EngineError naming labels[b][t]
// and, when need_labels and there are none, what a training call expects.
void check_token_labels(const Batch& b, bool need_labels, int vocab_size);

}  // namespace nt
