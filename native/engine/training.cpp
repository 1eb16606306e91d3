#include "engine/training.h"

#include <climits>
#include <cmath>
#include <string>

namespace nt {

void validate_train_config(const TrainConfig& tc) {
    auto in_range = [](const char* name, float v, float lo, float hi, const char* expect) {
        if (!(v >= lo && v < hi)) throw EngineError(std::string(name) + " must be " + expect + ", got " + std::to_string(v));
    };
    in_range("adam_beta1", tc.adam_beta1, 0.0f, 1.0f, "in [0, 1)");
    in_range("adam_beta2", tc.adam_beta2, 0.0f, 1.0f, "in [0, 1)");
    in_range("adam_epsilon", tc.adam_epsilon, 1e-30f, INFINITY, "> 0");
    in_range("weight_decay", tc.weight_decay, 0.0f, INFINITY, ">= 0");
    in_range("label_smoothing_factor", tc.label_smoothing_factor, 0.0f, 1.0f + 1e-7f, "in [0, 1]");
    if (!(tc.max_grad_norm == tc.max_grad_norm)) throw EngineError("max_grad_norm must be a number (<= 0 disables clipping)");
    if (tc.threads < 0) throw EngineError("threads must be >= 0 (0 = all cores), got " + std::to_string(tc.threads));
    for (size_t i = 0; i < tc.class_weights.size(); i++)
        if (!(tc.class_weights[i] >= 0.0f) || !std::isfinite(tc.class_weights[i]))
            throw EngineError("class_weights[" + std::to_string(i) + "] must be a finite number >= 0, got " +
                              std::to_string(tc.class_weights[i]));
}

float clip_scale(float norm, float max_norm) {
    if (max_norm <= 0) return 1.0f;
    const float coef = max_norm / (norm + 1e-6f);
    return coef < 1.0f ? coef : 1.0f;
}

void check_batch_size(const Batch& b, int max_position_embeddings) {
    if (b.B <= 0 || b.T <= 0)
        throw EngineError("batch must have at least one sequence of at least one token, got B=" + std::to_string(b.B) +
                          ", T=" + std::to_string(b.T));
    if (b.row_offset < 0 || b.row_offset > INT32_MAX)
        throw EngineError("batch.rowOffset must be an integer in [0, 2147483647] (the batch's first row in the global batch), got " +
                          std::to_string(b.row_offset));
    if ((int64_t)b.B * b.T > INT32_MAX)
        throw EngineError("batch of batchSize × seqLen = " + std::to_string(b.B) + " × " + std::to_string(b.T) +
                          " tokens is too large: at most 2147483647 tokens per batch");
    if (b.T > max_position_embeddings)
        throw EngineError("sequence length T=" + std::to_string(b.T) + " exceeds max_position_embeddings=" +
                          std::to_string(max_position_embeddings) + ": truncate input_ids to at most " +
                          std::to_string(max_position_embeddings) + " tokens");
}

std::string batch_where(const char* tensor, size_t i, int T) {
    return std::string(tensor) + "[" + std::to_string(i / T) + "][" + std::to_string(i % T) + "]";
}

void check_token_id(const char* tensor, size_t i, int T, int32_t id, int vocab_size) {
    if (id < 0 || id >= vocab_size)
        throw EngineError(batch_where(tensor, i, T) + " = " + std::to_string(id) +
                          " is out of range: expected 0 <= id < vocab_size (" + std::to_string(vocab_size) + ")");
}

void check_token_labels(const Batch& b, bool need_labels, int vocab_size) {
    if (need_labels && !b.labels)
        throw EngineError("labels are required for training: expected an Int32Array of length batchSize × seqLen");
    if (!b.labels) return;
    const size_t n = (size_t)b.B * b.T;
    for (size_t i = 0; i < n; i++) {
        const int32_t y = b.labels[i];
        if (y != -100 && (y < 0 || y >= vocab_size))
            throw EngineError(batch_where("labels", i, b.T) + " = " + std::to_string(y) +
                              " is out of range: expected a token id in [0, vocab_size = " + std::to_string(vocab_size) +
                              ") or -100 (ignored)");
    }
}

}  // namespace nt
