// The only file that knows Node-API. Exposes one class, Engine, wrapping an
// nt::Model: the BERT classifier (nt::EngineBase) or a Llama-family causal LM
// (nt::LlamaEngine), chosen by config.model_type. Long operations (forward, accumulate, step, trainStep) run on
// one native compute thread (ComputeThread: reached through an AsyncWorker on the libuv thread pool) and
// resolve a Promise; every C++ exception becomes a thrown JS Error or a rejected Promise.
//
// The caller may be hostile (issue 18): reading an argument can run
// JavaScript — a getter, a Proxy trap — and that JavaScript can call back into
// the same engine (dispose it, start a forward). So every entry point is
// written in four phases, in this order, and nothing else:
//   1. read   all of its JavaScript arguments into C++ values (read_batch,
//             read_int, an options object's fields, ...). The engine is not
//             touched: it may be disposed, or busy, by the time this returns.
//   2. take   the engine: slot_.Use(method) for a synchronous call, or
//             slot_.Queue(env, method, work, build) for a long one. Both throw
//             "disposed" / "busy". From here no JavaScript runs until phase 4,
//             so nothing can come in between the check and the use.
//   3. use    the engine — synchronously, or `work` on the thread pool — and
//             produce C++ values only.
//   4. build  the JavaScript result from those values (`build` runs on the
//             main thread for a queued call). Setting a key on a new object can
//             run a setter on Object.prototype, so the engine is not used here.
// Both architectures share the entry points (they differ in what a batch's
// labels hold and how many logits a forward gives, which nt::Model answers);
// prefill/decode exist for causal LMs only.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/distributed.h"
#include "engine/engine.h"
#include "engine/factory.h"
#include "models/llama.h"
#if defined(NODETUNE_WITH_NCCL)
#include "cuda/nccl_allreduce.h"
#endif

namespace {

using nt::EngineError;

using nt::OwnedBatch;  // a batch copied out of JS memory, owned by the worker thread

// ---- phase 1: JavaScript values → C++ values -----------------------------------
// Everything here may run JavaScript (getters, Proxy traps). Numbers are read
// as they are, never coerced: valueOf and Symbol.toPrimitive are not called.

// What the caller typed: 1e12 as 1000000000000, 2.5 as 2.5, NaN as nan.
std::string num(double d, int digits = 15) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.*g", digits, d);
    return buf;
}

// "a string", "an object", ... for "must be X, got Y" messages.
std::string type_name(const Napi::Value& v) {
    switch (v.Type()) {
        case napi_undefined: return "undefined";
        case napi_null: return "null";
        case napi_boolean: return "a boolean";
        case napi_number: return "a number";
        case napi_string: return "a string";
        case napi_symbol: return "a symbol";
        case napi_function: return "a function";
        case napi_external: return "an external";
        case napi_bigint: return "a bigint";
        case napi_object: return v.IsArray() ? "an array" : v.IsTypedArray() ? "a typed array" : "an object";
    }
    return "a value";
}

bool absent(const Napi::Value& v) { return v.IsUndefined() || v.IsNull(); }

// o[key] as an int: absent → `fallback` (or an error when required).
int read_int(const Napi::Object& o, const char* key, const std::string& what, bool required, int fallback) {
    const Napi::Value v = o.Get(key);
    const std::string name = what + "." + key;
    if (absent(v)) {
        if (required) throw EngineError(name + " is required (a positive integer)");
        return fallback;
    }
    if (!v.IsNumber()) throw EngineError(name + " must be a number, got " + type_name(v));
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || d != std::floor(d)) throw EngineError(name + " must be an integer, got " + num(d));
    if (d > 2147483647.0) throw EngineError(name + " = " + num(d) + " is too large: expected at most 2147483647");
    if (d < -2147483648.0) throw EngineError(name + " = " + num(d) + " is too small: expected at least -2147483648");
    return (int)d;
}

// o[key] as a double: absent → nullopt.
std::optional<double> read_number(const Napi::Object& o, const char* key, const std::string& what) {
    const Napi::Value v = o.Get(key);
    if (absent(v)) return std::nullopt;
    if (!v.IsNumber()) throw EngineError(what + "." + key + " must be a number, got " + type_name(v));
    return v.As<Napi::Number>().DoubleValue();
}

float read_float(const Napi::Object& o, const char* key, const std::string& what, float fallback) {
    const auto d = read_number(o, key, what);
    return d ? (float)*d : fallback;
}

// o[key] as a string: absent → `fallback`.
std::string read_string(const Napi::Object& o, const char* key, const std::string& what, const char* fallback,
                        const char* expect) {
    const Napi::Value v = o.Get(key);
    if (absent(v)) return fallback;
    if (!v.IsString()) throw EngineError(what + "." + key + " must be a string (" + expect + "), got " + type_name(v));
    return v.As<Napi::String>().Utf8Value();
}

bool detached(const Napi::TypedArray& a) { return a.ArrayBuffer().IsDetached(); }

// An Int32Array's contents, copied (the worker thread reads them after JS has moved on).
std::vector<int32_t> copy_int32(const Napi::Value& v, const char* key, size_t expected, const std::string& expect_desc,
                                bool required, int32_t fill) {
    if (absent(v)) {
        if (required) throw EngineError(std::string("batch.") + key + " is required: expected an Int32Array of length " + expect_desc);
        return std::vector<int32_t>(expected, fill);
    }
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        throw EngineError(std::string("batch.") + key + " must be an Int32Array of length " + expect_desc);
    auto a = v.As<Napi::Int32Array>();
    if (detached(a)) throw EngineError(std::string("batch.") + key + "'s buffer is detached: expected an Int32Array of length " + expect_desc);
    if (a.ElementLength() != expected)
        throw EngineError(std::string("batch.") + key + " has length " + std::to_string(a.ElementLength()) +
                          ", expected " + expect_desc);
    return std::vector<int32_t>(a.Data(), a.Data() + expected);
}

// labels: one per sequence (a classifier) or one per token (a causal LM).
OwnedBatch read_batch(const Napi::Value& value, bool need_labels, bool labels_per_token) {
    if (!value.IsObject()) throw EngineError("batch must be an object {input_ids, attention_mask, token_type_ids, labels, batchSize, seqLen}");
    auto o = value.As<Napi::Object>();
    OwnedBatch b;
    b.B = read_int(o, "batchSize", "batch", true, 0);
    b.T = read_int(o, "seqLen", "batch", true, 0);
    if (b.B <= 0 || b.T <= 0)
        throw EngineError("batch.batchSize and batch.seqLen must be positive, got " + std::to_string(b.B) + " and " +
                          std::to_string(b.T));
    const size_t n = (size_t)b.B * b.T;
    const std::string bt = "batchSize × seqLen = " + std::to_string(b.B) + " × " + std::to_string(b.T) + " = " + std::to_string(n);
    b.input_ids = copy_int32(o.Get("input_ids"), "input_ids", n, bt, true, 0);
    b.attention_mask = copy_int32(o.Get("attention_mask"), "attention_mask", n, bt, false, 1);
    b.token_type_ids = copy_int32(o.Get("token_type_ids"), "token_type_ids", n, bt, false, 0);
    const Napi::Value labels = o.Get("labels");  // read once: a getter may answer differently twice
    if (need_labels || !absent(labels))
        b.labels = labels_per_token ? copy_int32(labels, "labels", n, bt, true, 0)
                                    : copy_int32(labels, "labels", b.B, "batchSize = " + std::to_string(b.B), true, 0);
    b.row_offset = read_int(o, "rowOffset", "batch", false, 0);  // checked >= 0 with the batch (check_batch_size)
    return b;
}

// info[i] as an options object, or an error naming the call.
Napi::Object options_arg(const Napi::CallbackInfo& info, size_t i, const std::string& what) {
    if (info.Length() <= i || !info[i].IsObject()) throw EngineError(what + " required");
    return info[i].As<Napi::Object>();
}

std::string name_arg(const Napi::CallbackInfo& info, const char* method) {
    if (info.Length() < 1 || !info[0].IsString())
        throw EngineError(std::string("Engine.") + method + "(name): name must be a parameter name string");
    return info[0].As<Napi::String>().Utf8Value();
}

// A float in [0, inf), finite: a learning rate, a loss scale.
float finite_non_negative(double d, const std::string& what, const char* why) {
    if (!(d >= 0.0) || !std::isfinite(d)) throw EngineError(what + " must be a finite number >= 0" + why + ", got " + num(d));
    return (float)d;
}

// ---- the compute thread -----------------------------------------------------------

// Every engine's long calls run on this one native thread, whichever libuv
// pool thread picked the call up (that thread waits). libgomp keeps an OpenMP
// team per thread that opens a parallel region: calls hopping over libuv's
// four pool threads made up to four teams, more OpenMP threads than cores,
// and libgomp then parks idle workers on a futex after a few spins, so each
// of the hundreds of small parallel regions in a decode step paid a wake-up
// (batch-1 decode ran at half speed). Calls from all engines queue here in
// order; on a machine whose cores one call's OpenMP team already fills,
// running two at once only made them take turns. Never destroyed: a job may
// still run while the process exits, as a libuv pool thread's may.
class ComputeThread {
public:
    static ComputeThread& get() {
        static ComputeThread* t = new ComputeThread();
        return *t;
    }

    // Runs `job` on the compute thread and returns when it has; its exception,
    // if any, is rethrown here.
    void run(const std::function<void()>& job) {
        std::packaged_task<void()> task(job);
        std::future<void> done = task.get_future();
        {
            std::lock_guard<std::mutex> lock(mutex_);
            queue_.push_back(std::move(task));
        }
        ready_.notify_one();
        done.get();
    }

private:
    ComputeThread() {
        std::thread([this] {
            for (;;) {
                std::packaged_task<void()> task;
                {
                    std::unique_lock<std::mutex> lock(mutex_);
                    ready_.wait(lock, [this] { return !queue_.empty(); });
                    task = std::move(queue_.front());
                    queue_.pop_front();
                }
                task();  // an exception is stored in the task's future
            }
        }).detach();
    }

    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::packaged_task<void()>> queue_;
};

// ---- one engine, at most one worker ---------------------------------------------

// What an engine's JS wrapper and its running worker share. Both hold it by
// shared_ptr, so the engine lives until the last of them lets go: a wrapper
// collected — or finalized by a worker thread being torn down — while its
// step runs leaves the engine to that step.
template <typename E>
struct Held {
    std::unique_ptr<E> engine;  // null once disposed
    bool busy = false;          // a worker owns the engine; only that worker clears it
};

// One long call: `work` (phase 3) on the thread pool, `build` (phase 4) on the
// main thread, a Promise settled with the result.
template <typename E, typename Result>
class EngineWorker final : public Napi::AsyncWorker {
public:
    using Work = std::function<Result(E&)>;
    using Build = std::function<Napi::Value(Napi::Env, Result&)>;

    EngineWorker(Napi::Env env, std::shared_ptr<Held<E>> held, Work work, Build build)
        : Napi::AsyncWorker(env, "nodetune.Engine"), deferred_(Napi::Promise::Deferred::New(env)),
          held_(std::move(held)), work_(std::move(work)), build_(std::move(build)) {}
    ~EngineWorker() override { Release(); }  // a cancelled work never reaches OnOK/OnError

    Napi::Promise Promise() const { return deferred_.Promise(); }

    void Execute() override {
        try {
            ComputeThread::get().run([this] { result_ = work_(*held_->engine); });
        } catch (const std::exception& e) {
            SetError(e.what());
        } catch (...) {
            SetError("unknown native error in the nodetune engine");
        }
    }

    // OnOK and OnError also run while an environment is torn down (a worker
    // thread that exited or was terminated during the step): no JavaScript can
    // run then, the promise cannot be settled, and node-addon-api reports that
    // as a C++ exception which, leaving here, would abort the whole process.
    // So the engine is released first and every exception is caught.
    void OnOK() override {
        Release();
        try {
            Napi::Value value;
            try {
                value = build_(Env(), result_);
            } catch (const Napi::Error& e) {  // JavaScript threw while the result was built (a prototype setter)
                deferred_.Reject(e.Value());
                return;
            } catch (const std::exception& e) {
                deferred_.Reject(Napi::Error::New(Env(), e.what()).Value());
                return;
            }
            deferred_.Resolve(value);
        } catch (...) {
            // The environment is going away: nobody is left to receive the result.
        }
    }

    void OnError(const Napi::Error& e) override {
        Release();
        try {
            deferred_.Reject(e.Value());
        } catch (...) {
            // As in OnOK.
        }
    }

private:
    void Release() {
        if (!held_) return;
        held_->busy = false;
        held_.reset();
    }

    Napi::Promise::Deferred deferred_;
    std::shared_ptr<Held<E>> held_;
    Work work_;
    Build build_;
    Result result_{};
};

// Phase 2: the only way an entry point reaches its engine.
template <typename E>
class EngineSlot {
public:
    explicit EngineSlot(const char* cls) : cls_(cls), held_(std::make_shared<Held<E>>()) {}

    void Set(std::unique_ptr<E> engine) { held_->engine = std::move(engine); }

    // For a synchronous call, after its arguments are read; throws when disposed or busy.
    E& Use(const char* method) const {
        Check(method);
        return *held_->engine;
    }

    // For a long call, after its arguments are read: takes the engine for one
    // worker and returns that worker's Promise. Nothing from the check to the
    // queueing runs JavaScript, so no second call can slip in between.
    template <typename Result>
    Napi::Value Queue(Napi::Env env, const char* method, std::function<Result(E&)> work,
                      std::function<Napi::Value(Napi::Env, Result&)> build) {
        Check(method);
        auto* w = new EngineWorker<E, Result>(env, held_, std::move(work), std::move(build));
        Napi::Promise promise = w->Promise();
        held_->busy = true;
        try {
            w->Queue();
        } catch (...) {
            delete w;  // releases busy
            throw;
        }
        return promise;
    }

    void Dispose(const char* method) {
        if (held_->busy) throw EngineError(std::string(cls_) + "." + method + "(): a forward/trainStep is running; await it first");
        held_->engine.reset();
    }

private:
    void Check(const char* method) const {
        if (!held_->engine) throw EngineError(std::string(cls_) + "." + method + "(): the engine has been disposed");
        if (held_->busy)
            throw EngineError(std::string(cls_) + "." + method +
                              "(): the engine is busy with a forward/trainStep; await it before calling again");
    }

    const char* cls_;
    std::shared_ptr<Held<E>> held_;
};

// Runs f, turning C++ exceptions into a thrown JS Error.
template <typename F>
auto Guard(Napi::Env env, F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (const Napi::Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Napi::Error::New(env, e.what());
    }
}

// ---- data parallel: the MPI world (engine/distributed.h) -------------------------

// MPI allows one call at a time here (MPI_THREAD_SERIALIZED): a second
// collective while one runs on the thread pool is refused, not interleaved.
std::atomic<bool> g_collective_busy{false};
double g_timeout_s = 1800.0;  // HF TrainingArguments.ddp_timeout's default
bool g_world_ready = false;

struct CollectiveLock {
    explicit CollectiveLock(const std::string& what) {
        if (g_collective_busy.exchange(true)) throw EngineError(what + ": another collective is running; await it first");
    }
    ~CollectiveLock() { g_collective_busy = false; }
};

void world_or_throw(const std::string& what) {
    if (!g_world_ready) throw EngineError(what + ": call distributedInit() first (the process must run under mpirun)");
}

// The CUDA engine's gradients are summed on the device by NCCL (one GPU per
// rank; cuda/nccl_allreduce.h) in builds with the CUDA engine, MPI and NCCL.
#if defined(NODETUNE_WITH_NCCL)
constexpr bool kNcclCompiled = true;
#else
constexpr bool kNcclCompiled = false;
#endif

// Engine.step({allReduce: true})'s sum of this rank's gradients over the
// world, before the step: host gradients (CPU engines) through MPI, device
// gradients (the CUDA engine) through NCCL. Runs on the thread pool.
void allreduce_gradients(nt::Model& e) {
    const std::string what = "the gradient all-reduce of optimizer step " + std::to_string(e.optimizer_step() + 1);
    const auto [g, n] = e.host_gradients();
    const nt::Model::DeviceGradients d = e.device_gradients();
    if (!g && !d.data && e.device() != "cpu")
        throw EngineError("Engine.step({allReduce: true}): data-parallel training on " + e.device() +
                          " has no gradient all-reduce");
    if (d.data && !kNcclCompiled)
        throw EngineError("Engine.step({allReduce: true}): data-parallel training on " + e.device() +
                          " needs NCCL, which this build does not have (build the CUDA addon with MPI and NCCL: "
                          "bash scripts/cuda-toolkit.sh installs NCCL; source .cache/cuda/env.sh before npx cmake-js "
                          "compile --CDNODETUNE_CUDA=ON)");
    CollectiveLock lock("Engine.step({allReduce: true})");
    nt::Communicator& world = nt::Communicator::world(g_timeout_s);
    if (!d.data) {
        world.allreduce_sum(g, n, what);
        return;
    }
#if defined(NODETUNE_WITH_NCCL)
    nt::nccl_allreduce_sum(world, d.data, d.n, d.stream, d.device, what);
#endif
}

// ---- the BERT engine ----------------------------------------------------------------

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
public:
    static Napi::Function Init(Napi::Env env) {
        return DefineClass(env, "Engine",
                           {
                               InstanceMethod("parameterNames", &EngineWrap::ParameterNames),
                               InstanceMethod("parameterShape", &EngineWrap::ParameterShape),
                               InstanceMethod("getWeight", &EngineWrap::GetWeight),
                               InstanceMethod("setWeight", &EngineWrap::SetWeight),
                               InstanceMethod("getGradient", &EngineWrap::GetGradient),
                               InstanceMethod("getOptimizerState", &EngineWrap::GetOptimizerState),
                               InstanceMethod("setOptimizerState", &EngineWrap::SetOptimizerState),
                               InstanceMethod("setTrainable", &EngineWrap::SetTrainable),
                               InstanceMethod("isTrainable", &EngineWrap::IsTrainable),
                               InstanceMethod("getCounters", &EngineWrap::GetCounters),
                               InstanceMethod("setCounters", &EngineWrap::SetCounters),
                               InstanceMethod("numParameters", &EngineWrap::NumParameters),
                               InstanceMethod("activationBytes", &EngineWrap::ActivationBytes),
                               InstanceMethod("device", &EngineWrap::Device),
                               InstanceMethod("forward", &EngineWrap::Forward),
                               InstanceMethod("accumulate", &EngineWrap::Accumulate),
                               InstanceMethod("step", &EngineWrap::Step),
                               InstanceMethod("trainStep", &EngineWrap::TrainStep),
                               InstanceMethod("prefill", &EngineWrap::Prefill),
                               InstanceMethod("decode", &EngineWrap::Decode),
                               InstanceMethod("zeroGrad", &EngineWrap::ZeroGrad),
                               InstanceMethod("dispose", &EngineWrap::Dispose),
                           });
    }

    // No engine exists until every config and option value has been read.
    explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
        Guard(info.Env(), [&] {
            if (info.Length() < 1 || !info[0].IsObject())
                throw EngineError("new Engine(config, options): config must be an object with Hugging Face config fields "
                                  "(BertConfig, or LlamaConfig with model_type 'llama')");
            auto c = info[0].As<Napi::Object>();
            Napi::Object o = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(info.Env());
            const std::string model_type = read_string(c, "model_type", "config", "bert", "'bert', 'llama', 'qwen2' or 'mistral'");
            if (model_type == "llama" || model_type == "qwen2" || model_type == "mistral") {
                const nt::LlamaConfig cfg = read_llama_config(c);
                const nt::LoraConfig lora = read_lora(o);
                const Napi::Value gc = o.Get("gradient_checkpointing");
                if (!absent(gc) && !gc.IsBoolean())
                    throw EngineError("options.gradient_checkpointing must be a boolean, got " + type_name(gc));
                const bool checkpointing = gc.IsBoolean() && gc.As<Napi::Boolean>().Value();
                const Napi::Value tr = o.Get("trainable");
                if (!absent(tr) && !tr.IsBoolean())
                    throw EngineError("options.trainable must be a boolean, got " + type_name(tr));
                const bool trainable = !tr.IsBoolean() || tr.As<Napi::Boolean>().Value();
                const nt::TrainConfig tc = read_train_config(o);
                const nt::DeviceSpec device = read_device(o, true);
                labels_per_token_ = true;
                slot_.Set(nt::make_causal_lm(cfg, lora, tc, device, checkpointing, trainable));
                return;
            }
            if (model_type != "bert")
                throw EngineError("config.model_type '" + model_type + "' is not supported: expected 'bert', 'llama', 'qwen2' or 'mistral'");
            nt::BertConfig cfg;
            const std::string arch = read_string(o, "architecture", "options", "BertForSequenceClassification",
                                                 "'BertForSequenceClassification' or 'BertForMaskedLM'");
            if (arch != "BertForSequenceClassification" && arch != "BertForMaskedLM")
                throw EngineError("options.architecture '" + arch +
                                  "' is not supported for model_type 'bert': expected 'BertForSequenceClassification' or 'BertForMaskedLM'");
            cfg.masked_lm = arch == "BertForMaskedLM";
            cfg.vocab_size = read_int(c, "vocab_size", "config", true, 0);
            cfg.hidden_size = read_int(c, "hidden_size", "config", true, 0);
            cfg.num_hidden_layers = read_int(c, "num_hidden_layers", "config", true, 0);
            cfg.num_attention_heads = read_int(c, "num_attention_heads", "config", true, 0);
            cfg.intermediate_size = read_int(c, "intermediate_size", "config", true, 0);
            cfg.max_position_embeddings = read_int(c, "max_position_embeddings", "config", true, 0);
            cfg.type_vocab_size = read_int(c, "type_vocab_size", "config", true, 0);
            cfg.num_labels = read_int(c, "num_labels", "config", !cfg.masked_lm, 2);  // a masked LM has no labels
            cfg.pad_token_id = read_int(c, "pad_token_id", "config", false, 0);
            cfg.layer_norm_eps = read_float(c, "layer_norm_eps", "config", 1e-12f);
            cfg.hidden_dropout_prob = read_float(c, "hidden_dropout_prob", "config", 0.1f);
            cfg.attention_probs_dropout_prob = read_float(c, "attention_probs_dropout_prob", "config", 0.1f);
            cfg.classifier_dropout = read_float(c, "classifier_dropout", "config", cfg.hidden_dropout_prob);
            nt::TrainConfig tc = read_train_config(o);
            const Napi::Value cw = o.Get("class_weights");
            if (cw.IsTypedArray() && cw.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array) {
                auto a = cw.As<Napi::Float32Array>();
                if (detached(a)) throw EngineError("options.class_weights's buffer is detached: expected a Float32Array of num_labels entries");
                if (a.ElementLength() == 0)
                    throw EngineError("options.class_weights is empty: expected a Float32Array of num_labels entries (omit it for equal weights)");
                tc.class_weights.assign(a.Data(), a.Data() + a.ElementLength());
            } else if (!absent(cw)) {
                throw EngineError("options.class_weights must be a Float32Array of num_labels entries, got " + type_name(cw));
            }
            const nt::DeviceSpec device = read_device(o);
            labels_per_token_ = cfg.masked_lm;
            slot_.Set(nt::make_engine(cfg, tc, device));
        });
    }

private:
    using Engine = nt::Model;
    using Slot = nt::Model::Slot;

    EngineSlot<Engine> slot_{"Engine"};
    bool labels_per_token_ = false;  // fixed at construction: read_batch needs it before the engine is taken

    // Optimizer and runtime options (TrainingArguments names) both architectures take.
    static nt::TrainConfig read_train_config(const Napi::Object& o) {
        nt::TrainConfig tc;
        tc.adam_beta1 = read_float(o, "adam_beta1", "options", tc.adam_beta1);
        tc.adam_beta2 = read_float(o, "adam_beta2", "options", tc.adam_beta2);
        tc.adam_epsilon = read_float(o, "adam_epsilon", "options", tc.adam_epsilon);
        tc.weight_decay = read_float(o, "weight_decay", "options", tc.weight_decay);
        tc.max_grad_norm = read_float(o, "max_grad_norm", "options", tc.max_grad_norm);
        tc.label_smoothing_factor = read_float(o, "label_smoothing_factor", "options", 0.0f);
        if (tc.label_smoothing_factor < 0.0f || tc.label_smoothing_factor > 1.0f)
            throw EngineError("options.label_smoothing_factor must be in [0, 1]");
        tc.threads = read_int(o, "threads", "options", false, 0);
        const Napi::Value seed = o.Get("seed");
        if (seed.IsNumber()) {
            const double d = seed.As<Napi::Number>().DoubleValue();
            if (!std::isfinite(d)) throw EngineError("options.seed must be a finite number, got " + num(d));
            tc.seed = (uint64_t)seed.As<Napi::Number>().Int64Value();
        } else if (seed.IsBigInt()) {
            bool lossless;
            tc.seed = seed.As<Napi::BigInt>().Uint64Value(&lossless);
        } else if (!absent(seed)) {
            throw EngineError("options.seed must be a number or a bigint, got " + type_name(seed));
        }
        return tc;
    }

    static nt::DeviceSpec read_device(const Napi::Object& o, bool causal_lm = false) {
        const std::string device = read_string(o, "device", "options", "cpu", "'cpu', 'cuda' or 'cuda:N'");
        const std::string precision = read_string(o, "precision", "options", "fp32", "'fp32', 'bf16' or 'q8_0'");
        return nt::parse_device(device, precision, causal_lm);
    }

    static bool read_bool(const Napi::Object& o, const char* key, const std::string& what, bool fallback) {
        const Napi::Value v = o.Get(key);
        if (absent(v)) return fallback;
        if (!v.IsBoolean()) throw EngineError(what + "." + key + " must be true or false, got " + type_name(v));
        return v.As<Napi::Boolean>().Value();
    }

    // Hugging Face LlamaConfig fields, resolved by src/models/llama.ts
    // (head_dim, rope_scaling, o_proj_bias); the engine checks the values.
    static nt::LlamaConfig read_llama_config(const Napi::Object& c) {
        nt::LlamaConfig cfg;
        cfg.vocab_size = read_int(c, "vocab_size", "config", true, 0);
        cfg.hidden_size = read_int(c, "hidden_size", "config", true, 0);
        cfg.intermediate_size = read_int(c, "intermediate_size", "config", true, 0);
        cfg.num_hidden_layers = read_int(c, "num_hidden_layers", "config", true, 0);
        cfg.num_attention_heads = read_int(c, "num_attention_heads", "config", true, 0);
        cfg.num_key_value_heads = read_int(c, "num_key_value_heads", "config", false, cfg.num_attention_heads);
        cfg.head_dim = read_int(c, "head_dim", "config", false,
                                cfg.num_attention_heads > 0 ? cfg.hidden_size / cfg.num_attention_heads : 0);
        cfg.max_position_embeddings = read_int(c, "max_position_embeddings", "config", true, 0);
        cfg.rms_norm_eps = read_float(c, "rms_norm_eps", "config", 1e-6f);
        cfg.rope_theta = read_number(c, "rope_theta", "config").value_or(10000.0);
        cfg.tie_word_embeddings = read_bool(c, "tie_word_embeddings", "config", false);
        cfg.attention_bias = read_bool(c, "attention_bias", "config", false);
        cfg.o_proj_bias = read_bool(c, "o_proj_bias", "config", cfg.attention_bias);
        cfg.mlp_bias = read_bool(c, "mlp_bias", "config", false);
        const Napi::Value rs = c.Get("rope_scaling");
        if (!absent(rs)) {
            if (!rs.IsObject()) throw EngineError("config.rope_scaling must be null or an object, got " + type_name(rs));
            const Napi::Object r = rs.As<Napi::Object>();
            const std::string type = read_string(r, "rope_type", "config.rope_scaling", "default", "'default' or 'llama3'");
            if (type == "llama3") {
                cfg.rope_scaling.llama3 = true;
                cfg.rope_scaling.factor = read_number(r, "factor", "config.rope_scaling").value_or(NAN);
                cfg.rope_scaling.low_freq_factor = read_number(r, "low_freq_factor", "config.rope_scaling").value_or(NAN);
                cfg.rope_scaling.high_freq_factor = read_number(r, "high_freq_factor", "config.rope_scaling").value_or(NAN);
                cfg.rope_scaling.original_max_position_embeddings =
                    read_number(r, "original_max_position_embeddings", "config.rope_scaling").value_or(NAN);
            } else if (type != "default") {
                throw EngineError("config.rope_scaling.rope_type '" + type + "' is not supported: expected 'default' or 'llama3'");
            }
        }
        return cfg;
    }

    // PEFT LoraConfig fields (options.lora); absent = full fine-tuning.
    static nt::LoraConfig read_lora(const Napi::Object& o) {
        nt::LoraConfig lora;
        const Napi::Value v = o.Get("lora");
        if (absent(v)) return lora;
        if (!v.IsObject()) throw EngineError("options.lora must be an object {r, lora_alpha, lora_dropout, target_modules, use_rslora}, got " + type_name(v));
        const Napi::Object l = v.As<Napi::Object>();
        lora.r = read_int(l, "r", "options.lora", true, 0);
        lora.lora_alpha = read_float(l, "lora_alpha", "options.lora", 8.0f);  // PEFT default
        lora.lora_dropout = read_float(l, "lora_dropout", "options.lora", 0.0f);
        lora.use_rslora = read_bool(l, "use_rslora", "options.lora", false);
        const Napi::Value t = l.Get("target_modules");
        if (!t.IsArray()) throw EngineError("options.lora.target_modules must be an array of module names, got " + type_name(t));
        const Napi::Array arr = t.As<Napi::Array>();
        const uint32_t n = arr.Length();
        if (n > nt::kNumTargets * 4) throw EngineError("options.lora.target_modules has " + std::to_string(n) + " entries");
        for (uint32_t i = 0; i < n; i++) {
            const Napi::Value name = arr.Get(i);
            if (!name.IsString()) throw EngineError("options.lora.target_modules[" + std::to_string(i) + "] must be a string, got " + type_name(name));
            const std::string m = name.As<Napi::String>().Utf8Value();
            int k = 0;
            while (k < nt::kNumTargets && m != nt::kLoraTargetNames[k]) k++;
            if (k == nt::kNumTargets)
                throw EngineError("options.lora.target_modules[" + std::to_string(i) + "] = '" + m +
                                  "' is not a module LoRA can adapt: expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj");
            lora.target[k] = true;
        }
        const Napi::Value layers = l.Get("layers_to_transform");
        if (!absent(layers)) {
            if (!layers.IsArray()) throw EngineError("options.lora.layers_to_transform must be an array of layer numbers, got " + type_name(layers));
            const Napi::Array la = layers.As<Napi::Array>();
            const uint32_t count = la.Length();
            if (count > 4096) throw EngineError("options.lora.layers_to_transform has " + std::to_string(count) + " entries");
            for (uint32_t i = 0; i < count; i++) {
                const Napi::Value x = la.Get(i);
                if (!x.IsNumber()) throw EngineError("options.lora.layers_to_transform[" + std::to_string(i) + "] must be a number, got " + type_name(x));
                const double d = x.As<Napi::Number>().DoubleValue();
                if (d != std::floor(d) || !(d >= 0 && d < 1e6))
                    throw EngineError("options.lora.layers_to_transform[" + std::to_string(i) + "] must be a layer number >= 0, got " + num(d));
                lora.layers_to_transform.push_back((int)d);
            }
        }
        return lora;
    }

    // "[2, 32]" for messages.
    static std::string shape_text(const nt::ParamInfo& p) {
        std::string s = "[";
        for (size_t i = 0; i < p.shape.size(); i++) s += (i ? ", " : "") + std::to_string(p.shape[i]);
        return s + "]";
    }

    // Phase 3 reading of a Float32Array captured in phase 1: only now, after
    // every getter has run, are its type, buffer and length looked at (none
    // of which runs JavaScript).
    static const float* f32_data(const Napi::Value& v, const nt::ParamInfo& p, const std::string& what) {
        if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
            throw EngineError(what + ": expected a Float32Array of " + std::to_string(p.numel) + " values (shape " +
                              shape_text(p) + ")");
        auto a = v.As<Napi::Float32Array>();
        if (detached(a)) throw EngineError(what + ": the Float32Array's buffer is detached");
        if (a.ElementLength() != p.numel)
            throw EngineError(what + ": got " + std::to_string(a.ElementLength()) + " values, expected " +
                              std::to_string(p.numel) + " (shape " + shape_text(p) + ")");
        return a.Data();
    }

    static Napi::Float32Array ReadSlot(Napi::Env env, Engine& e, const nt::ParamInfo& p, Slot slot) {
        auto a = Napi::Float32Array::New(env, p.numel);  // allocating runs no JavaScript
        e.read(p, slot, a.Data());
        return a;
    }

    Napi::Value ParameterNames(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            std::vector<std::string> names;
            for (const auto& p : slot_.Use("parameterNames").params()) names.push_back(p.name);
            auto arr = Napi::Array::New(info.Env(), names.size());
            for (size_t i = 0; i < names.size(); i++) arr.Set(i, names[i]);
            return arr;
        });
    }

    Napi::Value ParameterShape(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "parameterShape");
            const std::vector<int64_t> shape = slot_.Use("parameterShape").param(name).shape;
            auto arr = Napi::Array::New(info.Env(), shape.size());
            for (size_t i = 0; i < shape.size(); i++) arr.Set(i, (double)shape[i]);
            return arr;
        });
    }

    Napi::Value GetWeight(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "getWeight");
            Engine& e = slot_.Use("getWeight");
            return ReadSlot(info.Env(), e, e.param(name), Slot::Weight);
        });
    }

    Napi::Value SetWeight(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "setWeight");
            const Napi::Value data = info[1];
            Engine& e = slot_.Use("setWeight");
            const auto& p = e.param(name);
            e.write(p, Slot::Weight, f32_data(data, p, "Engine.setWeight('" + name + "')"));
            return info.Env().Undefined();
        });
    }

    Napi::Value GetGradient(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "getGradient");
            Engine& e = slot_.Use("getGradient");
            return ReadSlot(info.Env(), e, e.param(name), Slot::Grad);
        });
    }

    Napi::Value GetOptimizerState(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "getOptimizerState");
            Engine& e = slot_.Use("getOptimizerState");
            const auto& p = e.param(name);
            Napi::Float32Array m = ReadSlot(info.Env(), e, p, Slot::ExpAvg);
            Napi::Float32Array v = ReadSlot(info.Env(), e, p, Slot::ExpAvgSq);
            auto o = Napi::Object::New(info.Env());  // phase 4: the engine is done with
            o.Set("exp_avg", m);
            o.Set("exp_avg_sq", v);
            return o;
        });
    }

    // exp_avg must be finite and exp_avg_sq finite and >= 0: AdamW divides by
    // sqrt(exp_avg_sq), and a NaN moment turns every later update into NaN
    // while the gradient norm (all the step checks) stays finite.
    static void check_moments(const float* m, const float* v, const nt::ParamInfo& p, const std::string& what) {
        for (size_t i = 0; i < p.numel; i++)
            if (!std::isfinite(m[i]))
                throw EngineError(what + ": exp_avg[" + std::to_string(i) + "] = " + num(m[i], 8) +
                                  ": expected finite values (a NaN or infinite moment poisons every later update)");
        for (size_t i = 0; i < p.numel; i++)
            if (!(v[i] >= 0.0f) || !std::isfinite(v[i]))
                throw EngineError(what + ": exp_avg_sq[" + std::to_string(i) + "] = " + num(v[i], 8) +
                                  ": expected a finite number >= 0 (a running mean of squared gradients)");
    }

    Napi::Value SetOptimizerState(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "setOptimizerState");
            const Napi::Object o = options_arg(info, 1, "Engine.setOptimizerState(name, {exp_avg, exp_avg_sq}): state object");
            const Napi::Value m = o.Get("exp_avg");
            const Napi::Value v = o.Get("exp_avg_sq");
            Engine& e = slot_.Use("setOptimizerState");
            const auto& p = e.param(name);
            const std::string what = "Engine.setOptimizerState('" + name + "')";
            const float* md = f32_data(m, p, what + " exp_avg");
            const float* vd = f32_data(v, p, what + " exp_avg_sq");
            check_moments(md, vd, p, what);
            e.write(p, Slot::ExpAvg, md);
            e.write(p, Slot::ExpAvgSq, vd);
            return info.Env().Undefined();
        });
    }

    Napi::Value SetTrainable(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "setTrainable");
            if (info.Length() < 2 || !info[1].IsBoolean())
                throw EngineError("Engine.setTrainable(name, trainable): trainable must be a boolean");
            const bool trainable = info[1].As<Napi::Boolean>().Value();
            slot_.Use("setTrainable").set_trainable(name, trainable);
            return info.Env().Undefined();
        });
    }

    Napi::Value IsTrainable(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const std::string name = name_arg(info, "isTrainable");
            const bool trainable = slot_.Use("isTrainable").param(name).trainable;
            return Napi::Boolean::New(info.Env(), trainable);
        });
    }

    Napi::Value GetCounters(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            Engine& e = slot_.Use("getCounters");
            const double t = (double)e.optimizer_step(), ms = (double)e.micro_step();
            auto o = Napi::Object::New(info.Env());
            o.Set("optimizerStep", t);
            o.Set("microStep", ms);
            return o;
        });
    }

    Napi::Value SetCounters(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const Napi::Object o = options_arg(info, 0, "Engine.setCounters({optimizerStep, microStep}): object");
            auto counter = [&](const char* key) -> std::optional<double> {
                const auto d = read_number(o, key, "Engine.setCounters: options");
                if (d && (!(*d >= 0 && *d <= 9007199254740991.0) || *d != std::floor(*d)))
                    throw EngineError(std::string("Engine.setCounters: ") + key + " must be an integer in [0, 2^53), got " + num(*d));
                return d;
            };
            const auto t = counter("optimizerStep");
            const auto ms = counter("microStep");
            Engine& e = slot_.Use("setCounters");
            if (t) e.set_optimizer_step((int64_t)*t);
            if (ms) e.set_micro_step((uint64_t)*ms);
            return info.Env().Undefined();
        });
    }

    Napi::Value NumParameters(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            return Napi::Number::New(info.Env(), (double)slot_.Use("numParameters").num_parameters());
        });
    }

    Napi::Value ActivationBytes(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            return Napi::Number::New(info.Env(), (double)slot_.Use("activationBytes").activation_bytes());
        });
    }

    Napi::Value Device(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), slot_.Use("device").device()); });
    }

    Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            slot_.Use("zeroGrad").zero_grad();
            return info.Env().Undefined();
        });
    }

    Napi::Value Dispose(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            slot_.Dispose("dispose");
            return info.Env().Undefined();
        });
    }

    // ---- long calls: read, then slot_.Queue(work, build) ----

    struct ForwardResult {
        std::vector<float> logits;
        float loss = 0.0f;
    };

    // forward(batch, {logits: false}) computes the loss only: a causal LM's
    // (B, T, vocab_size) logits are the largest tensor of the model.
    Napi::Value Forward(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto batch = std::make_shared<OwnedBatch>(read_batch(info[0], false, labels_per_token_));
            bool want_logits = true;
            if (info.Length() > 1 && info[1].IsObject()) want_logits = read_bool(info[1].As<Napi::Object>(), "logits", "Engine.forward: options", true);
            return slot_.Queue<ForwardResult>(
                info.Env(), "forward",
                [batch, want_logits](Engine& e) {
                    ForwardResult r;
                    if (want_logits) {
                        const size_t n = e.logits_size(batch->B, batch->T);
                        nt::require_memory(n * sizeof(float) * 2, "the logits of this forward (batchSize x seqLen x vocab_size)");
                        r.logits.resize(n);
                    }
                    r.loss = e.forward(batch->view(), want_logits ? r.logits.data() : nullptr, false);
                    return r;
                },
                [has_labels = !batch->labels.empty(), want_logits](Napi::Env env, ForwardResult& r) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    if (want_logits) {
                        auto a = Napi::Float32Array::New(env, r.logits.size());
                        std::copy(r.logits.begin(), r.logits.end(), a.Data());
                        o.Set("logits", a);
                    }
                    if (has_labels) o.Set("loss", r.loss);
                    return o;
                });
        });
    }

    // Generation (causal LMs): prefill(batch of left-padded prompts,
    // {maxNewTokens}) and decode(tokens: Int32Array of batchSize) each resolve
    // {logits: Float32Array (batchSize x vocab_size)} for the next token.
    static nt::CausalLM& causal_lm(Engine& e, const char* method) {
        auto* lm = dynamic_cast<nt::CausalLM*>(&e);
        if (!lm) throw EngineError(std::string("Engine.") + method + "(): generation needs a causal LM (config.model_type 'llama'), not a classifier");
        return *lm;
    }

    static Napi::Value LogitsResult(Napi::Env env, std::vector<float>& logits) {
        auto a = Napi::Float32Array::New(env, logits.size());
        std::copy(logits.begin(), logits.end(), a.Data());
        auto o = Napi::Object::New(env);
        o.Set("logits", a);
        return o;
    }

    Napi::Value Prefill(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto batch = std::make_shared<OwnedBatch>(read_batch(info[0], false, labels_per_token_));
            const Napi::Object o = options_arg(info, 1, "Engine.prefill: options {maxNewTokens}");
            const int max_new = read_int(o, "maxNewTokens", "Engine.prefill: options", true, 0);
            return slot_.Queue<std::vector<float>>(
                info.Env(), "prefill",
                [batch, max_new](Engine& e) {
                    nt::CausalLM& lm = causal_lm(e, "prefill");
                    std::vector<float> logits(lm.logits_size(batch->B, 1));
                    lm.prefill(batch->view(), max_new, logits.data());
                    return logits;
                },
                LogitsResult);
        });
    }

    Napi::Value Decode(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const Napi::Value v = info.Length() > 0 ? info[0] : info.Env().Undefined();
            if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
                throw EngineError("Engine.decode(tokens): tokens must be an Int32Array with one token per prompt, got " + type_name(v));
            auto a = v.As<Napi::Int32Array>();
            if (detached(a)) throw EngineError("Engine.decode(tokens): the Int32Array's buffer is detached");
            auto tokens = std::make_shared<std::vector<int32_t>>(a.Data(), a.Data() + a.ElementLength());
            return slot_.Queue<std::vector<float>>(
                info.Env(), "decode",
                [tokens](Engine& e) {
                    nt::CausalLM& lm = causal_lm(e, "decode");
                    if ((int)tokens->size() != lm.generation_batch())
                        throw EngineError("Engine.decode(tokens): got " + std::to_string(tokens->size()) + " tokens, expected one per prompt (" +
                                          std::to_string(lm.generation_batch()) + ")" +
                                          (lm.generation_batch() == 0 ? ": call prefill() first" : ""));
                    std::vector<float> logits(lm.logits_size((int)tokens->size(), 1));
                    lm.decode(tokens->data(), logits.data());
                    return logits;
                },
                LogitsResult);
        });
    }

    Napi::Value Accumulate(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto batch = std::make_shared<OwnedBatch>(read_batch(info[0], true, labels_per_token_));
            float scale = 1.0f;
            if (info.Length() > 1 && info[1].IsObject()) {
                const auto d = read_number(info[1].As<Napi::Object>(), "lossScale", "Engine.accumulate: options");
                if (d) scale = finite_non_negative(*d, "Engine.accumulate: options.lossScale", " (a micro-batch's share of the examples)");
            }
            return slot_.Queue<float>(
                info.Env(), "accumulate", [batch, scale](Engine& e) { return e.accumulate(batch->view(), scale); },
                [](Napi::Env env, float& loss) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    o.Set("loss", loss);
                    return o;
                });
        });
    }

    static float LearningRate(const Napi::CallbackInfo& info, size_t arg, const char* method) {
        const std::string what = std::string("Engine.") + method + ": options";
        const Napi::Object o = options_arg(info, arg, what + " {learningRate}");
        const auto lr = read_number(o, "learningRate", what);
        if (!lr) throw EngineError(what + ".learningRate must be a number, got undefined");
        return finite_non_negative(*lr, what + ".learningRate", "");
    }

    Napi::Value Step(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const float lr = LearningRate(info, 0, "step");
            const Napi::Value ar = info[0].As<Napi::Object>().Get("allReduce");
            if (!absent(ar) && !ar.IsBoolean())
                throw EngineError("Engine.step: options.allReduce must be true or false, got " + type_name(ar));
            const bool all_reduce = ar.IsBoolean() && ar.As<Napi::Boolean>().Value();
            if (all_reduce) world_or_throw("Engine.step({allReduce: true})");
            return slot_.Queue<float>(
                info.Env(), "step",
                [lr, all_reduce](Engine& e) {
                    if (all_reduce) allreduce_gradients(e);
                    return e.step(lr);
                },
                [](Napi::Env env, float& norm) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    o.Set("gradNorm", norm);
                    return o;
                });
        });
    }

    Napi::Value TrainStep(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto batch = std::make_shared<OwnedBatch>(read_batch(info[0], true, labels_per_token_));
            const float lr = LearningRate(info, 1, "trainStep");
            return slot_.Queue<std::pair<float, float>>(
                info.Env(), "trainStep",
                [batch, lr](Engine& e) {
                    const float loss = e.accumulate(batch->view(), 1.0f);
                    return std::make_pair(loss, e.step(lr));
                },
                [](Napi::Env env, std::pair<float, float>& r) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    o.Set("loss", r.first);
                    o.Set("gradNorm", r.second);
                    return o;
                });
        });
    }
};

// distributedInit({timeout}) -> {rank, size, host}: MPI_Init_thread on the
// first call (then only the timeout, seconds, changes). Throws without MPI.
Napi::Value DistributedInit(const Napi::CallbackInfo& info) {
    return Guard(info.Env(), [&]() -> Napi::Value {
        double timeout = g_timeout_s;
        if (info.Length() > 0 && !info[0].IsUndefined()) {
            if (!info[0].IsObject()) throw EngineError("distributedInit(options): options must be an object {timeout}");
            const auto t = read_number(info[0].As<Napi::Object>(), "timeout", "distributedInit: options");
            if (t) timeout = *t;
        }
        if (g_collective_busy) throw EngineError("distributedInit(): a collective is running; await it first");
        nt::Communicator& w = nt::Communicator::world(timeout);
        g_timeout_s = timeout;
        g_world_ready = true;
        auto o = Napi::Object::New(info.Env());
        o.Set("rank", w.rank());
        o.Set("size", w.size());
        o.Set("host", w.host());
        return o;
    });
}

class CollectiveWorker final : public Napi::AsyncWorker {
public:
    CollectiveWorker(Napi::Env env, std::vector<double> data, std::string what)
        : Napi::AsyncWorker(env, "nodetune.allReduce"), deferred_(Napi::Promise::Deferred::New(env)),
          data_(std::move(data)), what_(std::move(what)) {}
    Napi::Promise Promise() const { return deferred_.Promise(); }
    void Execute() override {
        try {
            CollectiveLock lock(what_);
            nt::Communicator::world(g_timeout_s).allreduce_sum(data_.data(), data_.size(), what_);
        } catch (const std::exception& e) {
            SetError(e.what());
        }
    }
    void OnOK() override {
        try {
            auto out = Napi::Float64Array::New(Env(), data_.size());
            std::copy(data_.begin(), data_.end(), out.Data());
            deferred_.Resolve(out);
        } catch (...) {
        }
    }
    void OnError(const Napi::Error& e) override {
        try {
            deferred_.Reject(e.Value());
        } catch (...) {
        }
    }

private:
    Napi::Promise::Deferred deferred_;
    std::vector<double> data_;
    std::string what_;
};

// distributedAllReduce(Float64Array, what) -> Promise<Float64Array>: the sum
// over ranks (a copy; the argument is untouched). `what` names it in errors.
Napi::Value DistributedAllReduce(const Napi::CallbackInfo& info) {
    return Guard(info.Env(), [&]() -> Napi::Value {
        if (info.Length() < 1 || !info[0].IsTypedArray() ||
            info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
            throw EngineError("distributedAllReduce(values, what): values must be a Float64Array");
        auto a = info[0].As<Napi::Float64Array>();
        if (detached(a)) throw EngineError("distributedAllReduce(values, what): values' buffer is detached");
        std::vector<double> data(a.Data(), a.Data() + a.ElementLength());
        const std::string what = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value()
                                                                          : std::string("an all-reduce");
        world_or_throw("distributedAllReduce");
        auto* w = new CollectiveWorker(info.Env(), std::move(data), what);
        Napi::Promise p = w->Promise();
        w->Queue();
        return p;
    });
}

// distributedFinish(abort): MPI_Finalize; MPI_Abort (every rank of the job) with
// abort true or after a failed collective.
Napi::Value DistributedFinish(const Napi::CallbackInfo& info) {
    return Guard(info.Env(), [&]() -> Napi::Value {
        const bool abort = info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
        if (g_collective_busy && !abort) throw EngineError("distributedFinish(): a collective is running; await it first");
        if (g_world_ready) {
            nt::Communicator& world = nt::Communicator::world(g_timeout_s);
#if defined(NODETUNE_WITH_NCCL)
            if (!abort) nt::nccl_finish(world);  // MPI_Abort ends the process, communicator and all
#endif
            world.finish(abort);
        }
        g_world_ready = false;
        return info.Env().Undefined();
    });
}

// checkDevice(device = 'cpu', precision = 'fp32', causalLM = false):
// nt::check_device, the engine factory's own rules, so a caller can reject a
// device before loading weights. An argument of another type is an error
// naming it (undefined takes the default).
Napi::Value CheckDevice(const Napi::CallbackInfo& info) {
    const auto given = [&](size_t i) { return info.Length() > i && !info[i].IsUndefined(); };
    const auto text = [&](size_t i, const char* what, const char* fallback) {
        if (!given(i)) return std::string(fallback);
        if (!info[i].IsString())
            throw EngineError(std::string("checkDevice: ") + what + " must be a string, got " + type_name(info[i]));
        return info[i].As<Napi::String>().Utf8Value();
    };
    try {
        const std::string device = text(0, "device ('cpu', 'cuda' or 'cuda:N')", "cpu");
        const std::string precision = text(1, "precision ('fp32', 'bf16' or 'q8_0')", "fp32");
        if (given(2) && !info[2].IsBoolean())
            throw EngineError("checkDevice: causalLM must be a boolean, got " + type_name(info[2]));
        nt::check_device(device, precision, given(2) && info[2].As<Napi::Boolean>().Value());
    } catch (const std::exception& e) {
        throw Napi::Error::New(info.Env(), e.what());
    }
    return info.Env().Undefined();
}

// firstNonFinite(values: Float32Array): the index of its first NaN or
// infinity, or -1. The loaders check untrusted weights with it: a JS loop
// takes 2 ns a value, 300 ms for a 135M-parameter model.
Napi::Value FirstNonFinite(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        throw Napi::TypeError::New(info.Env(), "firstNonFinite: expected a Float32Array, got " +
                                                   (info.Length() < 1 ? std::string("nothing") : type_name(info[0])));
    const auto a = info[0].As<Napi::Float32Array>();
    if (detached(a)) throw Napi::TypeError::New(info.Env(), "firstNonFinite: the Float32Array's buffer is detached");
    const float* p = a.Data();
    const size_t n = a.ElementLength();
    constexpr size_t kChunk = 4096;
    for (size_t i0 = 0; i0 < n; i0 += kChunk) {
        const size_t i1 = std::min(n, i0 + kChunk);
        // x * 0 is 0 for a finite x and NaN otherwise: one vector sum per chunk,
        // and the element search only in a chunk that has one.
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++) s += p[i] * 0.0f;
        if (s == 0.0f) continue;
        for (size_t i = i0; i < i1; i++)
            if (!std::isfinite(p[i])) return Napi::Number::New(info.Env(), (double)i);
    }
    return Napi::Number::New(info.Env(), -1);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
    exports.Set("Engine", EngineWrap::Init(env));
    exports.Set("checkDevice", Napi::Function::New(env, CheckDevice, "checkDevice"));
    exports.Set("firstNonFinite", Napi::Function::New(env, FirstNonFinite, "firstNonFinite"));
    exports.Set("cudaCompiled", Napi::Boolean::New(env, nt::cuda_compiled()));
    exports.Set("mpiCompiled", Napi::Boolean::New(env, nt::Communicator::available()));
    exports.Set("ncclCompiled", Napi::Boolean::New(env, kNcclCompiled));
    exports.Set("distributedInit", Napi::Function::New(env, DistributedInit, "distributedInit"));
    exports.Set("distributedAllReduce", Napi::Function::New(env, DistributedAllReduce, "distributedAllReduce"));
    exports.Set("distributedFinish", Napi::Function::New(env, DistributedFinish, "distributedFinish"));
    using Max = nt::BertConfigLimits;
    auto limits = Napi::Object::New(env);
    limits.Set("vocab_size", Max::vocab_size);
    limits.Set("hidden_size", Max::hidden_size);
    limits.Set("num_hidden_layers", Max::num_hidden_layers);
    limits.Set("num_attention_heads", Max::num_attention_heads);
    limits.Set("intermediate_size", Max::intermediate_size);
    limits.Set("max_position_embeddings", Max::max_position_embeddings);
    limits.Set("type_vocab_size", Max::type_vocab_size);
    limits.Set("num_labels", Max::num_labels);
    exports.Set("configLimits", limits);
    return exports;
}

}  // namespace

NODE_API_MODULE(nodetune, Init)
