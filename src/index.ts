/**
 * nodetune's public TypeScript API. The CLI (src/cli) only wraps these.
 */
export { BERT_DEFAULTS, parameterShapes, type BertConfig } from './config.js';
export { Engine, loadAddon, isCausalLM, type Batch, type EngineOptions, type OptimizerState, type ModelConfig } from './engine.js';
export { parseLlamaConfig, resolveLoraConfig, resolveLoraTargets, llamaParameterShapes, peftKey, LORA_TARGETS, CAUSAL_LM_MODEL_TYPES, type LlamaConfig, type LoraConfig, type LoraTarget, type RopeScaling } from './models/llama.js';
export { Sampler, resolveSampling, type SamplingOptions } from './llm/sampling.js';
export { loadModel, saveModel, engineWeights, type Model, type LoadModelOptions } from './model.js';
export * from './io/index.js';
export * from './tokenizer/index.js';
export * from './chat/index.js';
export * from './data/index.js';
export * from './metrics/index.js';
export * from './report/index.js';
export { getScheduler, getWarmupSteps, SCHEDULER_TYPES, type SchedulerType, type LrSchedule } from './train/schedule.js';
export { Trainer, collate, evaluateExamples, predictExamples, type TrainingArguments, type EncodedExample, type LogEntry, type EvalEntry } from './train/trainer.js';
export { fineTune, prepareData, type FineTuneOptions, type FineTuneResult } from './train/finetune.js';
export { evaluateFile, type EvaluateFileOptions } from './train/evaluate.js';
export { exportOnnx, type ExportOptions, type ExportResult } from './onnx/export.js';
export { exportModelFolder, type FolderExportOptions } from './onnx/folder.js';
export { Classifier, type ClassifierOptions, type ClassifyOptions, type Prediction } from './classifier.js';
export { startServer, type ServeOptions, type RunningServer } from './serve/server.js';
export { startLlmServer, loadServedLLM, type LlmServeOptions, type RunningLlmServer } from './serve/llm-server.js';
export { LLM, type LLMLoadOptions, type GenerateOptions, type GenerateResult, type AssistantMessage, type Prompt } from './llm/llm.js';
export { parseToolCalls, TOOL_CALL_FORMATS, type ParsedToolCall, type ParseToolCallsOptions, type ToolCallFormat } from './llm/tool-calls.js';
export { ChoiceConstraint } from './llm/choices.js';
export { loadCausalLM, type CausalLM, type LoadCausalLMOptions } from './llm/load.js';
export { generateIds, type DecoderEngine, type GenerateIdsOptions, type TokenConstraint, type TokenEvent, type FinishReason } from './llm/generate.js';
export { LLM_FILES } from './io/hub.js';
