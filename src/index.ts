/**
 * nodetune's public TypeScript API. The CLI (src/cli) only wraps these.
 */
export { BERT_DEFAULTS, parameterShapes, type BertConfig } from './config.js';
export { Engine, loadAddon, checkDevice, isCausalLM, type Batch, type EngineOptions, type OptimizerState, type ModelConfig } from './engine.js';
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
export { fineTuneCausalLM, fineTuneCausalLM as sft, SFT_OUTPUTS, type SftOptions, type SftResult, type SftEvalResults } from './tasks/causal-lm/sft.js';
export { readSftFile, parseSftRecord, type SftRecord, type SftDataset, type ChatRecord, type CompletionRecord, type TextRecord as SftTextRecord } from './tasks/causal-lm/data.js';
export { encodeSftRecords, encodeSftRecord, packExamples, collateSft, chatForTemplate, IGNORE_INDEX, type SftRow, type EncodedSftExample, type EncodeStats } from './tasks/causal-lm/encode.js';
export { CausalLMTask, evaluateCausalLMLoss, type CausalLMEvalResults } from './tasks/causal-lm/task.js';
export { evaluateByGeneration, generateAnswers, generationTarget, scoreGenerations, referenceChoices, type GenerationMetrics, type GenerationSample, type GenerationTarget } from './tasks/causal-lm/generation.js';
export { ChoiceTrie } from './tasks/causal-lm/choices.js';
export { loadSftModel, exportCausalLM, type LoadedSftModel, type ExportCausalLMOptions } from './tasks/causal-lm/model.js';
export { evaluateCausalLM, type EvaluateCausalLMOptions } from './tasks/causal-lm/evaluate.js';
export { ClassificationTask } from './tasks/classification.js';
export type { TrainingTask, TaskEvalResults, TaskSetting } from './tasks/task.js';
