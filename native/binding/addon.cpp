// The only file that knows Node-API. Exposes one class, Engine, wrapping
// nt::Engine. Long operations (forward, accumulate, step, trainStep) run on
// the libuv thread pool through one AsyncWorker and resolve a Promise; every
// C++ exception becomes a thrown JS Error or a rejected Promise.
#include <napi.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/factory.h"

namespace {

using nt::EngineError;

using nt::OwnedBatch;  // a batch copied out of JS memory, owned by the worker thread

int get_int(const Napi::Object& o, const char* key, const char* what, bool required, int fallback) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) {
        if (required) throw EngineError(std::string(what) + "." + key + " is required (a positive integer)");
        return fallback;
    }
    if (!v.IsNumber()) throw EngineError(std::string(what) + "." + key + " must be a number");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (d != (double)(int64_t)d || d > 2147483647.0 || d < -2147483648.0)
        throw EngineError(std::string(what) + "." + key + " must be an integer, got " + std::to_string(d));
    return (int)d;
}

float get_float(const Napi::Object& o, const char* key, const char* what, float fallback) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) return fallback;
    if (!v.IsNumber()) throw EngineError(std::string(what) + "." + key + " must be a number");
    return v.As<Napi::Number>().FloatValue();
}

std::vector<int32_t> copy_int32(const Napi::Object& batch, const char* key, size_t expected, const std::string& expect_desc,
                                bool required, int32_t fill) {
    Napi::Value v = batch.Get(key);
    if (v.IsUndefined() || v.IsNull()) {
        if (required) throw EngineError(std::string("batch.") + key + " is required: expected an Int32Array of length " + expect_desc);
        return std::vector<int32_t>(expected, fill);
    }
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        throw EngineError(std::string("batch.") + key + " must be an Int32Array of length " + expect_desc);
    auto a = v.As<Napi::Int32Array>();
    if (a.ElementLength() != expected)
        throw EngineError(std::string("batch.") + key + " has length " + std::to_string(a.ElementLength()) +
                          ", expected " + expect_desc);
    return std::vector<int32_t>(a.Data(), a.Data() + expected);
}

OwnedBatch read_batch(const Napi::Value& value, bool need_labels) {
    if (!value.IsObject()) throw EngineError("batch must be an object {input_ids, attention_mask, token_type_ids, labels, batchSize, seqLen}");
    auto o = value.As<Napi::Object>();
    OwnedBatch b;
    b.B = get_int(o, "batchSize", "batch", true, 0);
    b.T = get_int(o, "seqLen", "batch", true, 0);
    if (b.B <= 0 || b.T <= 0)
        throw EngineError("batch.batchSize and batch.seqLen must be positive, got " + std::to_string(b.B) + " and " +
                          std::to_string(b.T));
    const size_t n = (size_t)b.B * b.T;
    const std::string bt = "batchSize × seqLen = " + std::to_string(b.B) + " × " + std::to_string(b.T) + " = " + std::to_string(n);
    b.input_ids = copy_int32(o, "input_ids", n, bt, true, 0);
    b.attention_mask = copy_int32(o, "attention_mask", n, bt, false, 1);
    b.token_type_ids = copy_int32(o, "token_type_ids", n, bt, false, 0);
    Napi::Value labels = o.Get("labels");
    if (need_labels || !(labels.IsUndefined() || labels.IsNull()))
        b.labels = copy_int32(o, "labels", b.B, "batchSize = " + std::to_string(b.B), true, 0);
    return b;
}

// Runs `work` on the thread pool; `done` turns its result into JS on the main
// thread. `finally` runs on the main thread either way (clears the busy flag).
class EngineWorker : public Napi::AsyncWorker {
public:
    // `owner` (the JS Engine) is kept alive until the work is done, so the
    // native engine cannot be collected under a running step.
    EngineWorker(Napi::Env env, const Napi::Object& owner, std::function<void()> work,
                 std::function<Napi::Value(Napi::Env)> done, std::function<void()> finally)
        : Napi::AsyncWorker(env, "nodetune.Engine"), deferred_(Napi::Promise::Deferred::New(env)),
          owner_(Napi::Persistent(owner)), work_(std::move(work)), done_(std::move(done)),
          finally_(std::move(finally)) {}
    Napi::Promise Promise() const { return deferred_.Promise(); }
    void Execute() override {
        try {
            work_();
        } catch (const std::exception& e) {
            SetError(e.what());
        } catch (...) {
            SetError("unknown native error in the nodetune engine");
        }
    }
    void OnOK() override {
        finally_();
        Napi::Value result;
        try {
            result = done_(Env());
        } catch (const std::exception& e) {
            deferred_.Reject(Napi::Error::New(Env(), e.what()).Value());
            return;
        }
        deferred_.Resolve(result);
    }
    void OnError(const Napi::Error& e) override {
        finally_();
        deferred_.Reject(e.Value());
    }

private:
    Napi::Promise::Deferred deferred_;
    Napi::ObjectReference owner_;
    std::function<void()> work_;
    std::function<Napi::Value(Napi::Env)> done_;
    std::function<void()> finally_;
};

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
                               InstanceMethod("device", &EngineWrap::Device),
                               InstanceMethod("forward", &EngineWrap::Forward),
                               InstanceMethod("accumulate", &EngineWrap::Accumulate),
                               InstanceMethod("step", &EngineWrap::Step),
                               InstanceMethod("trainStep", &EngineWrap::TrainStep),
                               InstanceMethod("zeroGrad", &EngineWrap::ZeroGrad),
                               InstanceMethod("dispose", &EngineWrap::Dispose),
                           });
    }

    explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
        Guard(info.Env(), [&] {
            if (info.Length() < 1 || !info[0].IsObject())
                throw EngineError("new Engine(config, options): config must be an object with Hugging Face BertConfig fields");
            auto c = info[0].As<Napi::Object>();
            nt::BertConfig cfg;
            cfg.vocab_size = get_int(c, "vocab_size", "config", true, 0);
            cfg.hidden_size = get_int(c, "hidden_size", "config", true, 0);
            cfg.num_hidden_layers = get_int(c, "num_hidden_layers", "config", true, 0);
            cfg.num_attention_heads = get_int(c, "num_attention_heads", "config", true, 0);
            cfg.intermediate_size = get_int(c, "intermediate_size", "config", true, 0);
            cfg.max_position_embeddings = get_int(c, "max_position_embeddings", "config", true, 0);
            cfg.type_vocab_size = get_int(c, "type_vocab_size", "config", true, 0);
            cfg.num_labels = get_int(c, "num_labels", "config", true, 0);
            cfg.pad_token_id = get_int(c, "pad_token_id", "config", false, 0);
            cfg.layer_norm_eps = get_float(c, "layer_norm_eps", "config", 1e-12f);
            cfg.hidden_dropout_prob = get_float(c, "hidden_dropout_prob", "config", 0.1f);
            cfg.attention_probs_dropout_prob = get_float(c, "attention_probs_dropout_prob", "config", 0.1f);
            cfg.classifier_dropout = get_float(c, "classifier_dropout", "config", cfg.hidden_dropout_prob);
            nt::TrainConfig tc;
            Napi::Object o = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(info.Env());
            tc.adam_beta1 = get_float(o, "adam_beta1", "options", tc.adam_beta1);
            tc.adam_beta2 = get_float(o, "adam_beta2", "options", tc.adam_beta2);
            tc.adam_epsilon = get_float(o, "adam_epsilon", "options", tc.adam_epsilon);
            tc.weight_decay = get_float(o, "weight_decay", "options", tc.weight_decay);
            tc.max_grad_norm = get_float(o, "max_grad_norm", "options", tc.max_grad_norm);
            tc.label_smoothing_factor = get_float(o, "label_smoothing_factor", "options", 0.0f);
            if (tc.label_smoothing_factor < 0.0f || tc.label_smoothing_factor > 1.0f)
                throw EngineError("options.label_smoothing_factor must be in [0, 1]");
            tc.threads = get_int(o, "threads", "options", false, 0);
            Napi::Value seed = o.Get("seed");
            if (seed.IsNumber()) tc.seed = (uint64_t)seed.As<Napi::Number>().Int64Value();
            else if (seed.IsBigInt()) { bool lossless; tc.seed = seed.As<Napi::BigInt>().Uint64Value(&lossless); }
            Napi::Value cw = o.Get("class_weights");
            if (cw.IsTypedArray() && cw.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array) {
                auto a = cw.As<Napi::Float32Array>();
                tc.class_weights.assign(a.Data(), a.Data() + a.ElementLength());
            } else if (!cw.IsUndefined() && !cw.IsNull()) {
                throw EngineError("options.class_weights must be a Float32Array of num_labels entries");
            }
            const std::string device = o.Get("device").IsString() ? o.Get("device").As<Napi::String>().Utf8Value() : "cpu";
            const std::string precision =
                o.Get("precision").IsString() ? o.Get("precision").As<Napi::String>().Utf8Value() : "fp32";
            engine_ = nt::make_engine(cfg, tc, nt::parse_device(device, precision));
        });
    }

private:
    std::unique_ptr<nt::EngineBase> engine_;
    bool busy_ = false;

    // Runs f, turning C++ exceptions into a thrown JS Error.
    template <typename F>
    static auto Guard(Napi::Env env, F&& f) -> decltype(f()) {
        try {
            return f();
        } catch (const Napi::Error&) {
            throw;
        } catch (const std::exception& e) {
            throw Napi::Error::New(env, e.what());
        }
    }

    nt::EngineBase& Live(const char* method) {
        if (!engine_) throw EngineError(std::string("Engine.") + method + "(): the engine has been disposed");
        if (busy_)
            throw EngineError(std::string("Engine.") + method +
                              "(): the engine is busy with a forward/trainStep; await it before calling again");
        return *engine_;
    }

    std::string Name(const Napi::CallbackInfo& info, const char* method) {
        if (info.Length() < 1 || !info[0].IsString())
            throw EngineError(std::string("Engine.") + method + "(name): name must be a parameter name string");
        return info[0].As<Napi::String>().Utf8Value();
    }

    using Slot = nt::EngineBase::Slot;

    Napi::Float32Array Read(Napi::Env env, nt::EngineBase& e, const nt::ParamInfo& p, Slot slot) {
        auto a = Napi::Float32Array::New(env, p.numel);
        e.read(p, slot, a.Data());
        return a;
    }

    void CopyIn(const Napi::Value& v, nt::EngineBase& e, const nt::ParamInfo& p, Slot slot, const char* method) {
        std::string shape = "[";
        for (size_t i = 0; i < p.shape.size(); i++) shape += (i ? ", " : "") + std::to_string(p.shape[i]);
        shape += "]";
        if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
            throw EngineError(std::string("Engine.") + method + "('" + p.name + "'): expected a Float32Array of " +
                              std::to_string(p.numel) + " values (shape " + shape + ")");
        auto a = v.As<Napi::Float32Array>();
        if (a.ElementLength() != p.numel)
            throw EngineError(std::string("Engine.") + method + "('" + p.name + "'): got " + std::to_string(a.ElementLength()) +
                              " values, expected " + std::to_string(p.numel) + " (shape " + shape + ")");
        e.write(p, slot, a.Data());
    }

    Napi::Value ParameterNames(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("parameterNames");
            auto arr = Napi::Array::New(info.Env(), e.params().size());
            for (size_t i = 0; i < e.params().size(); i++) arr.Set(i, e.params()[i].name);
            return arr;
        });
    }

    Napi::Value ParameterShape(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            const auto& p = Live("parameterShape").param(Name(info, "parameterShape"));
            auto arr = Napi::Array::New(info.Env(), p.shape.size());
            for (size_t i = 0; i < p.shape.size(); i++) arr.Set(i, (double)p.shape[i]);
            return arr;
        });
    }

    Napi::Value GetWeight(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("getWeight");
            const auto& p = e.param(Name(info, "getWeight"));
            return Read(info.Env(), e, p, Slot::Weight);
        });
    }

    Napi::Value SetWeight(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("setWeight");
            const auto& p = e.param(Name(info, "setWeight"));
            CopyIn(info[1], e, p, Slot::Weight, "setWeight");
            return info.Env().Undefined();
        });
    }

    Napi::Value GetGradient(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("getGradient");
            const auto& p = e.param(Name(info, "getGradient"));
            return Read(info.Env(), e, p, Slot::Grad);
        });
    }

    Napi::Value GetOptimizerState(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("getOptimizerState");
            const auto& p = e.param(Name(info, "getOptimizerState"));
            auto o = Napi::Object::New(info.Env());
            o.Set("exp_avg", Read(info.Env(), e, p, Slot::ExpAvg));
            o.Set("exp_avg_sq", Read(info.Env(), e, p, Slot::ExpAvgSq));
            return o;
        });
    }

    Napi::Value SetOptimizerState(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("setOptimizerState");
            const auto& p = e.param(Name(info, "setOptimizerState"));
            if (info.Length() < 2 || !info[1].IsObject())
                throw EngineError("Engine.setOptimizerState(name, {exp_avg, exp_avg_sq}): state object required");
            auto o = info[1].As<Napi::Object>();
            CopyIn(o.Get("exp_avg"), e, p, Slot::ExpAvg, "setOptimizerState");
            CopyIn(o.Get("exp_avg_sq"), e, p, Slot::ExpAvgSq, "setOptimizerState");
            return info.Env().Undefined();
        });
    }

    Napi::Value SetTrainable(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("setTrainable");
            const std::string name = Name(info, "setTrainable");
            if (info.Length() < 2 || !info[1].IsBoolean())
                throw EngineError("Engine.setTrainable(name, trainable): trainable must be a boolean");
            e.set_trainable(name, info[1].As<Napi::Boolean>().Value());
            return info.Env().Undefined();
        });
    }

    Napi::Value IsTrainable(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            return Napi::Boolean::New(info.Env(), Live("isTrainable").param(Name(info, "isTrainable")).trainable);
        });
    }

    Napi::Value GetCounters(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("getCounters");
            auto o = Napi::Object::New(info.Env());
            o.Set("optimizerStep", (double)e.optimizer_step());
            o.Set("microStep", (double)e.micro_step());
            return o;
        });
    }

    Napi::Value SetCounters(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            auto& e = Live("setCounters");
            if (info.Length() < 1 || !info[0].IsObject())
                throw EngineError("Engine.setCounters({optimizerStep, microStep}): object required");
            auto o = info[0].As<Napi::Object>();
            auto counter = [&](const char* key, double fallback) {
                Napi::Value v = o.Get(key);
                const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
                if (!(d >= 0 && d <= 9007199254740991.0) || d != std::floor(d))
                    throw EngineError(std::string("Engine.setCounters: ") + key + " must be an integer in [0, 2^53), got " + std::to_string(d));
                return d;
            };
            const int64_t t = (int64_t)counter("optimizerStep", (double)e.optimizer_step());
            const double ms = counter("microStep", (double)e.micro_step());
            e.set_optimizer_step(t);
            e.set_micro_step((uint64_t)ms);
            return info.Env().Undefined();
        });
    }

    Napi::Value NumParameters(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            return Napi::Number::New(info.Env(), (double)Live("numParameters").num_parameters());
        });
    }

    Napi::Value Device(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), Live("device").device()); });
    }

    Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            Live("zeroGrad").zero_grad();
            return info.Env().Undefined();
        });
    }

    Napi::Value Dispose(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            if (busy_) throw EngineError("Engine.dispose(): a forward/trainStep is running; await it first");
            engine_.reset();
            return info.Env().Undefined();
        });
    }

    // Queues work on the thread pool while holding the busy flag.
    Napi::Value Queue(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> done) {
        busy_ = true;
        auto* w = new EngineWorker(env, Value(), std::move(work), std::move(done), [this] { busy_ = false; });
        Napi::Promise p = w->Promise();
        w->Queue();
        return p;
    }

    Napi::Value Forward(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            nt::EngineBase& e = Live("forward");
            auto batch = std::make_shared<OwnedBatch>(read_batch(info[0], false));
            auto logits = std::make_shared<std::vector<float>>((size_t)batch->B * e.config().num_labels);
            auto loss = std::make_shared<float>(0.0f);
            return Queue(
                info.Env(), [&e, batch, logits, loss] { *loss = e.forward(batch->view(), logits->data(), false); },
                [batch, logits, loss](Napi::Env env) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    auto a = Napi::Float32Array::New(env, logits->size());
                    std::copy(logits->begin(), logits->end(), a.Data());
                    o.Set("logits", a);
                    if (!batch->labels.empty()) o.Set("loss", *loss);
                    return o;
                });
        });
    }

    Napi::Value Accumulate(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            nt::EngineBase& e = Live("accumulate");
            auto batch = std::make_shared<OwnedBatch>(read_batch(info[0], true));
            float scale = 1.0f;
            if (info.Length() > 1 && info[1].IsObject()) scale = get_float(info[1].As<Napi::Object>(), "lossScale", "options", 1.0f);
            if (!(scale >= 0.0f) || !std::isfinite(scale))
                throw EngineError("Engine.accumulate: options.lossScale must be a finite number >= 0 (a micro-batch's share of the examples), got " +
                                  std::to_string(scale));
            auto loss = std::make_shared<float>(0.0f);
            return Queue(
                info.Env(), [&e, batch, loss, scale] { *loss = e.accumulate(batch->view(), scale); },
                [loss](Napi::Env env) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    o.Set("loss", *loss);
                    return o;
                });
        });
    }

    static float LearningRate(const Napi::CallbackInfo& info, size_t arg, const char* method) {
        if (info.Length() <= arg || !info[arg].IsObject())
            throw EngineError(std::string("Engine.") + method + ": options {learningRate} required");
        Napi::Value v = info[arg].As<Napi::Object>().Get("learningRate");
        if (!v.IsNumber()) throw EngineError(std::string("Engine.") + method + ": options.learningRate must be a number");
        const double lr = v.As<Napi::Number>().DoubleValue();
        if (!(lr >= 0.0) || !std::isfinite(lr))
            throw EngineError(std::string("Engine.") + method + ": options.learningRate must be a finite number >= 0, got " + std::to_string(lr));
        return (float)lr;
    }

    Napi::Value Step(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            nt::EngineBase& e = Live("step");
            const float lr = LearningRate(info, 0, "step");
            auto norm = std::make_shared<float>(0.0f);
            return Queue(
                info.Env(), [&e, norm, lr] { *norm = e.step(lr); },
                [norm](Napi::Env env) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    o.Set("gradNorm", *norm);
                    return o;
                });
        });
    }

    Napi::Value TrainStep(const Napi::CallbackInfo& info) {
        return Guard(info.Env(), [&]() -> Napi::Value {
            nt::EngineBase& e = Live("trainStep");
            auto batch = std::make_shared<OwnedBatch>(read_batch(info[0], true));
            const float lr = LearningRate(info, 1, "trainStep");
            auto out = std::make_shared<std::pair<float, float>>(0.0f, 0.0f);
            return Queue(
                info.Env(),
                [&e, batch, out, lr] {
                    out->first = e.accumulate(batch->view(), 1.0f);
                    out->second = e.step(lr);
                },
                [out](Napi::Env env) -> Napi::Value {
                    auto o = Napi::Object::New(env);
                    o.Set("loss", out->first);
                    o.Set("gradNorm", out->second);
                    return o;
                });
        });
    }
};

// checkDevice(device, precision): nt::check_device, the engine factory's own
// rules, so a caller can reject a device before loading any weights.
Napi::Value CheckDevice(const Napi::CallbackInfo& info) {
    const auto text = [&](size_t i, const char* fallback) {
        return info.Length() > i && info[i].IsString() ? info[i].As<Napi::String>().Utf8Value() : std::string(fallback);
    };
    try {
        nt::check_device(text(0, "cpu"), text(1, "fp32"));
    } catch (const std::exception& e) {
        throw Napi::Error::New(info.Env(), e.what());
    }
    return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
    exports.Set("Engine", EngineWrap::Init(env));
    exports.Set("checkDevice", Napi::Function::New(env, CheckDevice, "checkDevice"));
    exports.Set("cudaCompiled", Napi::Boolean::New(env, nt::cuda_compiled()));
    return exports;
}

}  // namespace

NODE_API_MODULE(nodetune, Init)
