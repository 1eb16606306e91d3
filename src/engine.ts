/**
 * The native training engine, as TypeScript sees it. One `Engine` holds a
 * BertForSequenceClassification (Hugging Face modeling_bert.py semantics) with
 * its gradients and AdamW moments in native memory; each long call (forward,
 * accumulate, step, trainStep) runs off the main thread and resolves a Promise.
 * The Promise-returning calls are queued one after another; the synchronous
 * accessors are not (see the Engine class).
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { types } from 'node:util';
import type { BertArchitecture, BertConfig } from './config.js';
import { resolveLoraConfig, type LlamaConfig, type LoraConfig } from './models/llama.js';

/** A tokenized batch: B sequences of T tokens, row-major (B*T). */
export interface Batch {
  /** (B, T) token ids, each in [0, vocab_size). */
  input_ids: Int32Array;
  /** (B, T) 1 = real token, 0 = padding. Default: all ones. */
  attention_mask?: Int32Array;
  /** (B, T) segment ids in [0, type_vocab_size). Default: all zeros. */
  token_type_ids?: Int32Array;
  /**
   * Classifier: (B) class indices in [0, num_labels), or -100 to ignore an example.
   * Masked LM: (B, T) the original token ids at the masked positions, -100 elsewhere (not shifted).
   * Causal LM: (B, T) token ids, -100 where no loss is taken; the engine shifts
   * them (position t's logits predict labels[t + 1]), as Hugging Face does.
   */
  labels?: Int32Array;
  batchSize: number;
  seqLen: number;
  /**
   * Data parallel: this batch is rows [rowOffset, rowOffset + batchSize) of a global batch padded
   * to the same seqLen; dropout draws that slice of the global batch's masks. Default 0.
   */
  rowOffset?: number;
}

/** Optimizer, loss and runtime options (Hugging Face TrainingArguments names). */
export interface EngineOptions {
  /** Drives dropout masks (counter-based RNG keyed by seed, step, tensor, index). */
  seed?: number;
  /** Worker threads for the kernels; default: all cores (OpenMP default). */
  threads?: number;
  adam_beta1?: number;
  adam_beta2?: number;
  adam_epsilon?: number;
  /** Decoupled weight decay; never applied to biases and LayerNorm weights. */
  weight_decay?: number;
  /** Global gradient-norm clipping threshold; <= 0 disables. Default 1.0. */
  max_grad_norm?: number;
  label_smoothing_factor?: number;
  /** (num_labels) per-class loss weights, as torch CrossEntropyLoss(weight=). */
  class_weights?: Float32Array;
  /**
   * 'cpu' (default), 'cuda' or 'cuda:N' (needs an addon built with a CUDA toolkit). Plain 'cuda' in a process an MPI
   * launcher started is the rank's own GPU, cuda:<local rank> (see {@link resolveDevice}).
   */
  device?: string;
  /**
   * 'fp32' (default) or 'bf16'. CUDA: mixed precision (bf16 weights and activations, fp32 master weights and
   * moments). CPU, causal LM with `lora` or `trainable: false` only: the frozen base's GEMMs read bf16 weights
   * (oneDNN; AMX-BF16 or AVX512_BF16), activations rounded to bf16 going in, everything else fp32; the encoder's CPU
   * engine is fp32 only. Throws where the build or CPU has no bf16 GEMMs, naming which.
   * 'q8_0' (causal LM on the CPU, `trainable: false` or `lora` for generation): the layers' linear weights, the
   * token embedding and the lm_head are held as Q8_0 only (ggml's format: blocks of 32 int8 with an fp16 scale, as
   * llama.cpp's Q8_0 GGUFs; setWeight quantizes, getWeight returns the quantized values) and read through an int8
   * kernel (AVX-512 VNNI, else AVX2) with the activations quantized the same way (a forward's loss too); embedding
   * rows are looked up dequantized: about a quarter of fp32's bytes per decode step and of its weight memory. Norms,
   * adapters and attention stay fp32. Training calls throw.
   */
  precision?: Precision;
  /**
   * BERT only: the head. 'BertForSequenceClassification' (default): pooler + classifier, labels per
   * sequence. 'BertForMaskedLM': the prediction head with its decoder tied to the word embeddings,
   * labels per token, loss over the labelled positions fused with the decoder and chunked (CPU only;
   * no class_weights or label_smoothing_factor).
   */
  architecture?: BertArchitecture;
  /** Causal LM only: PEFT LoRA adapters on a frozen base (absent: every parameter trains). */
  lora?: LoraConfig;
  /** Causal LM only: keep each layer's input and recompute the layer in backward (less memory, ~1/3 more compute). */
  gradient_checkpointing?: boolean;
  /**
   * Causal LM only, without `lora`: false builds an engine that trains nothing (no gradient or AdamW buffers: 3x
   * the weights' memory saved), for forward, prefill and decode; with precision 'bf16' its weights are read in bf16.
   * Default true. Training calls then throw.
   */
  trainable?: boolean;
}

/** EngineOptions.precision. */
export type Precision = 'fp32' | 'bf16' | 'q8_0';

/** Every EngineOptions key (`satisfies` keeps the list complete and exact). */
const ENGINE_OPTION_KEYS = Object.keys({
  seed: 1, threads: 1, adam_beta1: 1, adam_beta2: 1, adam_epsilon: 1, weight_decay: 1, max_grad_norm: 1, label_smoothing_factor: 1,
  class_weights: 1, device: 1, precision: 1, architecture: 1, lora: 1, gradient_checkpointing: 1, trainable: 1,
} satisfies Record<keyof EngineOptions, 1>) as Array<keyof EngineOptions>;

/** What a model engine is built from: a classifier's BertConfig or a causal LM's LlamaConfig. */
export type ModelConfig = BertConfig | LlamaConfig;

/** Whether a config describes a Llama-family causal LM (model_type llama, qwen2 or mistral). */
export function isCausalLM(config: ModelConfig): config is LlamaConfig {
  return config.model_type === 'llama' || config.model_type === 'qwen2' || config.model_type === 'mistral';
}

export interface OptimizerState {
  exp_avg: Float32Array;
  exp_avg_sq: Float32Array;
}

interface NativeEngine {
  parameterNames(): string[];
  parameterShape(name: string): number[];
  getWeight(name: string): Float32Array;
  setWeight(name: string, data: Float32Array): void;
  getGradient(name: string): Float32Array;
  getOptimizerState(name: string): OptimizerState;
  setOptimizerState(name: string, state: OptimizerState): void;
  setTrainable(name: string, trainable: boolean): void;
  isTrainable(name: string): boolean;
  getCounters(): { optimizerStep: number; microStep: number };
  setCounters(c: { optimizerStep: number; microStep: number }): void;
  numParameters(): number;
  activationBytes(): number;
  device(): string;
  forward(batch: Batch, opts?: { logits: boolean }): Promise<{ logits?: Float32Array; loss?: number }>;
  prefill(batch: Batch, opts: { maxNewTokens: number }): Promise<{ logits: Float32Array }>;
  decode(tokens: Int32Array): Promise<{ logits: Float32Array }>;
  accumulate(batch: Batch, opts: { lossScale: number }): Promise<{ loss: number }>;
  step(opts: { learningRate: number; allReduce?: boolean }): Promise<{ gradNorm: number }>;
  trainStep(batch: Batch, opts: { learningRate: number }): Promise<{ loss: number; gradNorm: number }>;
  zeroGrad(): void;
  dispose(): void;
}

interface NativeAddon {
  Engine: new (config: ModelConfig, options: Omit<EngineOptions, 'lora'> & { lora?: unknown }) => NativeEngine;
  /** Whether this build has the CUDA backend. */
  cudaCompiled: boolean;
  /** native/engine/factory.cpp's check_device: throws the factory's error for a bad device/precision. */
  checkDevice(device: string, precision: string, causalLM?: boolean): void;
  /** The index of the first NaN or infinity in `values`, or -1. */
  firstNonFinite(values: Float32Array): number;
  /** Whether this build links MPI (native/engine/distributed.*). */
  mpiCompiled: boolean;
  /**
   * Whether this build sums the CUDA engine's gradients over ranks with NCCL (native/cuda/nccl_allreduce.*): built
   * with the CUDA engine, MPI and NCCL together. Without it, Engine.step({allReduce: true}) on CUDA throws.
   */
  ncclCompiled: boolean;
  /** MPI_Init_thread on the first call; timeout: seconds a collective waits for every rank. */
  distributedInit(options?: { timeout?: number }): { rank: number; size: number; host: string };
  /** The sum over ranks of `values` (a new array); `what` names the collective in errors. */
  distributedAllReduce(values: Float64Array, what: string): Promise<Float64Array>;
  /** MPI_Finalize, or MPI_Abort (the whole job) with abort or after a failed collective. */
  distributedFinish(abort?: boolean): void;
  /** native/engine/engine.h's BertConfigLimits: the largest config sizes the engine accepts. */
  configLimits: Readonly<Record<'vocab_size' | 'hidden_size' | 'num_hidden_layers' | 'num_attention_heads' | 'intermediate_size' | 'max_position_embeddings' | 'type_vocab_size' | 'num_labels', number>>;
}

let addon: NativeAddon | undefined;

/**
 * Loads build/Release/nodetune.node (cmake-js or node-gyp output), or the file
 * NODETUNE_ADDON names (CI uses it to test the node-gyp build side by side).
 */
export function loadAddon(): NativeAddon {
  if (addon) return addon;
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = process.env.NODETUNE_ADDON
    ? [process.env.NODETUNE_ADDON]
    : [join(here, '../../build/Release/nodetune.node'), join(here, '../build/Release/nodetune.node')];
  const path = candidates.find((p) => existsSync(p));
  if (!path) {
    throw new Error(
      `nodetune native addon not found (looked for ${candidates.join(', ')}): run \`npm run build:native\` (cmake-js) or \`npm run build:gyp\` (node-gyp)`,
    );
  }
  addon = createRequire(import.meta.url)(path) as NativeAddon;
  return addon;
}

/**
 * Checks a device and precision with the native engine factory's own check
 * (check_device in native/engine/factory.cpp), without creating an engine, so a caller can
 * reject them before loading weights: device 'cpu', 'cuda' or 'cuda:N';
 * precision 'fp32' or 'bf16' (CUDA; on the CPU only for a causal LM, `causalLM`
 * true, on a build with oneDNN and a CPU with AMX-BF16 or AVX512_BF16), 'q8_0'
 * (a causal LM on the CPU); 'cuda' needs an addon built with the CUDA backend. Whether a GPU and driver are
 * present is only known when the engine is created.
 * @throws Error with the factory's wording.
 */
export function checkDevice(device = 'cpu', precision = 'fp32', causalLM = false): void {
  loadAddon().checkDevice(device, precision, causalLM);
}

/**
 * The index of the first NaN or infinity in `values`, or -1: what the loaders check an untrusted
 * file's weights with (a native pass: about a fifth of a JS loop's time, ~60 ms for SmolLM2-135M).
 * @throws TypeError unless `values` is a Float32Array (not detached).
 */
export function firstNonFinite(values: Float32Array): number {
  return loadAddon().firstNonFinite(values);
}

/**
 * The device an engine is created on: `device` as given, except plain 'cuda' in a process that an MPI launcher
 * started (`mpirun -n N`, `--nproc N`), which becomes `cuda:<local rank>`: the rank's index among the ranks on its
 * machine (Open MPI's OMPI_COMM_WORLD_LOCAL_RANK, or MPICH Hydra's MPI_LOCALRANKID), so each rank trains on a GPU of
 * its own (one GPU per rank, as torchrun's LOCAL_RANK and llm.c's multi-GPU runs assign them; NCCL sums the gradients).
 * 'cpu', 'cuda:N' (every rank on that device) and undefined are returned unchanged.
 * @param env the process environment (a parameter for tests).
 */
export function resolveDevice(device: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (device !== 'cuda') return device;
  const local = env.OMPI_COMM_WORLD_LOCAL_RANK ?? env.MPI_LOCALRANKID;
  if (local === undefined || !/^\d+$/.test(local)) return device;
  return `cuda:${Number(local)}`;
}

/**
 * A BertForSequenceClassification training engine in native memory.
 * Parameter names are Hugging Face checkpoint keys with the `bert.` prefix
 * (`bert.encoder.layer.0.attention.self.query.weight`, `classifier.weight`).
 *
 * Concurrency: the Promise-returning methods (forward, accumulate, step,
 * trainStep, zeroGrad, dispose) go into one FIFO queue, so they never overlap
 * each other; each starts in a later microtask, once the previous one has
 * settled. What they are given is copied when they are called (the batch's
 * arrays and sizes, the learning rate), so a caller may refill the same
 * buffers for the next batch at once. The synchronous methods
 * (parameterNames, parameterShape, device, numParameters, activationBytes,
 * getWeight, setWeight, getGradient, get/setOptimizerState, setTrainable,
 * isTrainable, get/setCounters) are NOT queued: they act at once
 * on the engine's current state. Hence
 * - while a queued call is running on its worker thread, they throw
 *   "Engine.<method>(): the engine is busy with a forward/trainStep; await it
 *   before calling again";
 * - called in the same tick as a queued call that has not started yet (e.g.
 *   `engine.trainStep(b, o); engine.getWeight(n)` without await), they run
 *   before it: getWeight sees the weights from before the step, and setWeight
 *   changes the weights the step will use.
 * Await the queued call's Promise before using them.
 *
 * The same class holds a Llama-family causal LM (a {@link LlamaConfig}, as
 * src/models/llama.ts parses it; optionally with `lora`): parameter names are
 * then `model.layers.0.self_attn.q_proj.weight` and, for adapters, PEFT's
 * `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`; labels are
 * per token; forward's logits are (B, T, vocab_size); prefill/decode generate.
 * @throws Error for an invalid config (naming the field), or an option EngineOptions does not have.
 */
export class Engine {
  readonly config: ModelConfig;
  private native: NativeEngine;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: { config: ModelConfig } & EngineOptions) {
    if (!opts || typeof opts.config !== 'object' || opts.config === null) {
      throw new Error('new Engine({ config, ...options }): config must be an object with Hugging Face config fields (BertConfig, or LlamaConfig with model_type llama)');
    }
    for (const key of Object.keys(opts)) {
      // A typo (`archtecture`) would otherwise build a different engine without a word.
      if (key !== 'config' && !ENGINE_OPTION_KEYS.includes(key as keyof EngineOptions)) {
        throw new Error(`new Engine: unknown option '${key}'; expected config and any of: ${ENGINE_OPTION_KEYS.join(', ')}`);
      }
    }
    const { config, lora, ...given } = opts;
    this.config = config;
    const device = resolveDevice(given.device);
    const options = device === given.device ? given : { ...given, device };
    if (isCausalLM(config)) {
      if (options.architecture !== undefined) throw new Error('options.architecture is for BERT models (BertForSequenceClassification or BertForMaskedLM)');
      this.native = Engine.create(config, { ...options, lora: lora === undefined ? undefined : resolveLoraConfig(lora) }, given.device);
      return;
    }
    if (lora !== undefined || options.gradient_checkpointing !== undefined || options.trainable !== undefined) {
      throw new Error('options.lora, options.gradient_checkpointing and options.trainable are for causal LMs (config.model_type llama, qwen2 or mistral)');
    }
    const resolved = {
      ...config,
      classifier_dropout: config.classifier_dropout ?? config.hidden_dropout_prob,
    };
    this.native = Engine.create(resolved, options, given.device);
  }

  /** The native engine; an error about a device that resolveDevice chose says how it was chosen. */
  private static create(config: ModelConfig, options: Omit<EngineOptions, 'lora'> & { lora?: unknown }, given: string | undefined): NativeEngine {
    try {
      return new (loadAddon().Engine)(config, options);
    } catch (err) {
      if (options.device === given || !(err instanceof Error) || !/cuda|device/i.test(err.message)) throw err;
      throw new Error(`device '${given}' is ${options.device} in this MPI rank (its local rank: one GPU per rank): ${err.message}`);
    }
  }

  /** All parameter names, in the engine's layout order. */
  parameterNames(): string[] {
    return this.native.parameterNames();
  }
  /** Shape of a parameter, e.g. [num_labels, hidden_size] for classifier.weight. */
  parameterShape(name: string): number[] {
    return this.native.parameterShape(name);
  }
  /** Where it runs, e.g. "cpu" or "cuda:0 (NVIDIA H200, bf16)". */
  device(): string {
    return this.native.device();
  }
  /** Number of scalar parameters. */
  numParameters(): number {
    return this.native.numParameters();
  }
  /**
   * Bytes the activation arenas hold now: sized by the last batch's B × T
   * (grown for a larger one, given back after one that needs under a quarter);
   * 0 on a device that does not report it.
   */
  activationBytes(): number {
    return this.native.activationBytes();
  }
  /** A copy of a parameter (float32, row-major). @throws on an unknown name. */
  getWeight(name: string): Float32Array {
    return this.native.getWeight(name);
  }
  /** Sets a parameter; the length must equal the shape's product. @throws naming tensor and shape. */
  setWeight(name: string, data: Float32Array): void {
    this.native.setWeight(name, data);
  }
  /** Accumulated gradient of a parameter since the last step (float32). */
  getGradient(name: string): Float32Array {
    return this.native.getGradient(name);
  }
  getOptimizerState(name: string): OptimizerState {
    return this.native.getOptimizerState(name);
  }
  setOptimizerState(name: string, state: OptimizerState): void {
    this.native.setOptimizerState(name, state);
  }
  /** Frozen parameters get no gradient and no update. */
  setTrainable(name: string, trainable: boolean): void {
    this.native.setTrainable(name, trainable);
  }
  isTrainable(name: string): boolean {
    return this.native.isTrainable(name);
  }
  /** optimizerStep: AdamW's t; microStep: training forwards (the dropout RNG's step). */
  getCounters(): { optimizerStep: number; microStep: number } {
    return this.native.getCounters();
  }
  setCounters(c: { optimizerStep: number; microStep: number }): void {
    this.native.setCounters(c);
  }

  /**
   * Inference forward (dropout off). logits: (B, num_labels) float32 for a
   * classifier, (B, T, vocab_size) for a masked or causal LM; loss: mean cross-entropy
   * when batch.labels is given (a masked LM's over its labelled positions, a causal
   * LM's over its shifted targets; 0 when there are none).
   */
  forward(batch: Batch): Promise<{ logits: Float32Array; loss?: number }>;
  /** With `{ logits: false }`: the loss alone (a causal LM's logits are the largest tensor there is). */
  forward(batch: Batch, opts: { logits: false }): Promise<{ logits?: undefined; loss?: number }>;
  forward(batch: Batch, opts: { logits?: boolean } = {}): Promise<{ logits?: Float32Array; loss?: number }> {
    return this.enqueueWith(
      () => ({ batch: snapshotBatch(batch), logits: opts?.logits ?? true }),
      (a) => this.native.forward(a.batch, { logits: a.logits }),
    );
  }

  /**
   * Starts a generation (causal LM): `batch` holds the prompts, LEFT-padded
   * so each ends in column T-1 (attention_mask 0 on the padding); the KV cache
   * is sized for `maxNewTokens` more tokens. Resolves each prompt's
   * next-token logits, (B, vocab_size) float32. Replaces any earlier generation.
   * @throws (rejects) for a classifier, right padding, or prompt + maxNewTokens > max_position_embeddings.
   */
  prefill(batch: Batch, opts: { maxNewTokens: number }): Promise<{ logits: Float32Array }> {
    return this.enqueueWith(
      () => ({ batch: snapshotBatch(batch), maxNewTokens: opts?.maxNewTokens }),
      (a) => this.native.prefill(a.batch, { maxNewTokens: a.maxNewTokens }),
    );
  }

  /**
   * Feeds one token per prompt (Int32Array of B) at each row's next position
   * and resolves the next logits (B, vocab_size).
   * @throws (rejects) before prefill, past the cache's maxNewTokens, or for a bad id.
   */
  decode(tokens: Int32Array): Promise<{ logits: Float32Array }> {
    return this.enqueueWith(() => (types.isInt32Array(tokens) ? new Int32Array(tokens) : tokens), (t) => this.native.decode(t));
  }

  /**
   * Forward + loss + backward in training mode, ADDING gradients scaled by
   * `lossScale` (a micro-batch's share of the examples under gradient
   * accumulation). Returns the micro-batch's mean loss.
   */
  accumulate(batch: Batch, opts: { lossScale?: number } = {}): Promise<{ loss: number }> {
    return this.enqueueWith(
      () => ({ batch: snapshotBatch(batch), lossScale: opts?.lossScale ?? 1 }),
      (a) => this.native.accumulate(a.batch, { lossScale: a.lossScale }),
    );
  }

  /**
   * Clip (max_grad_norm) + AdamW + zero gradients. gradNorm is before clipping. allReduce (data
   * parallel, after src/train/distributed.ts joined the MPI world): first sum the gradients over
   * every rank (MPI_Allreduce), so each rank applies the same update.
   * @throws Error naming a rank that did not reach the all-reduce within the timeout.
   */
  step(opts: { learningRate: number; allReduce?: boolean }): Promise<{ gradNorm: number }> {
    return this.enqueueWith(
      () => (typeof opts === 'object' && opts !== null && opts.allReduce !== undefined ? { ...snapshotRate(opts), allReduce: opts.allReduce } : snapshotRate(opts)),
      (o) => this.native.step(o),
    );
  }

  /** One full training step on one batch: accumulate + step. */
  trainStep(batch: Batch, opts: { learningRate: number }): Promise<{ loss: number; gradNorm: number }> {
    return this.enqueueWith(
      () => ({ batch: snapshotBatch(batch), opts: snapshotRate(opts) }),
      (a) => this.native.trainStep(a.batch, a.opts),
    );
  }

  zeroGrad(): Promise<void> {
    return this.enqueue(async () => this.native.zeroGrad());
  }

  /** Frees native memory once queued work is done; later calls throw. */
  async dispose(): Promise<void> {
    await this.enqueue(async () => this.native.dispose());
  }

  private enqueue<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** enqueue, with `take` run now (its error rejects the returned Promise) and `fn` run in turn on what it took. */
  private enqueueWith<A, R>(take: () => A, fn: (args: A) => Promise<R>): Promise<R> {
    let args: A;
    try {
      args = take();
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue(() => fn(args));
  }
}

/**
 * The batch as it is at the call: its Int32Arrays copied and its sizes read,
 * so that refilling the caller's buffers in the same tick cannot change what
 * a queued call trains on. Anything else passes through for the engine to
 * refuse by name.
 */
function snapshotBatch(batch: Batch): Batch {
  if (typeof batch !== 'object' || batch === null) return batch;
  const copy = (a: unknown) => (types.isInt32Array(a) ? new Int32Array(a) : a);
  const { input_ids, attention_mask, token_type_ids, labels, batchSize, seqLen, rowOffset } = batch;
  return { input_ids: copy(input_ids), attention_mask: copy(attention_mask), token_type_ids: copy(token_type_ids), labels: copy(labels), batchSize, seqLen, rowOffset } as Batch;
}

/** { learningRate } as it is at the call. */
function snapshotRate(opts: { learningRate: number }): { learningRate: number } {
  return typeof opts === 'object' && opts !== null ? { learningRate: opts.learningRate } : opts;
}
