/**
 * Data-parallel training across processes (PyTorch DistributedDataParallel's contract, on Open
 * MPI as llm.c runs it): `mpirun -n N nodetune train|sft|pretrain ...` starts N ranks; each loads
 * the same data and model, takes its shard of every global batch, and the gradients are summed
 * over ranks before one identical clipped AdamW step on every rank. The global batch, its order
 * and the dropout masks are those of one process, so N ranks compute what one process computes.
 *
 * - `--batch-size` stays the global batch (the same command with and without `--nproc` trains
 *   the same model); rank r runs rows shardRange(B, r, N) of each micro-batch, padded to the
 *   global micro-batch's length, with `rowOffset` so dropout draws its slice of the masks.
 * - Each rank's loss scale is its shard's share of the optimizer step's examples (classifier) or
 *   target tokens (language models), so the summed gradient is the one-process gradient.
 * - Only rank 0 writes (logs, checkpoints, reports, the final model); evaluation during training
 *   is sharded and its sums reduced (TrainingTask.evaluationSums).
 * - A rank that does not reach a collective within `ddp_timeout` seconds (Hugging Face's
 *   TrainingArguments name; default 1800) makes the others throw an error naming it; a CLI run
 *   then ends the whole MPI job (abortDistributed), and checkpoint-last stays the last one saved.
 */
import { loadAddon, type Batch } from '../engine.js';

export interface World {
  /** This process's rank, 0..size-1 (MPI_COMM_WORLD). */
  rank: number;
  size: number;
  /** MPI_Get_processor_name. */
  host: string;
}

/** HF TrainingArguments.ddp_timeout's default, seconds. */
export const DDP_TIMEOUT = 1800;
/** The largest ddp_timeout the native world takes (about 31 years). */
export const MAX_TIMEOUT = 1e9;

const SINGLE: World = { rank: 0, size: 1, host: '' };
let world: World = SINGLE;
let joined = false;

/** @throws Error "<name> <value>: expected a number of seconds > 0 and at most 1e9" for a bad ddp_timeout. */
export function checkTimeout(timeout: number, name: string): void {
  if (!(timeout > 0 && timeout <= MAX_TIMEOUT)) throw new Error(`${name} ${timeout}: expected a number of seconds > 0 and at most ${MAX_TIMEOUT}`);
}

/**
 * The number of ranks an MPI launcher started this process among (Open MPI's
 * OMPI_COMM_WORLD_SIZE, or PMI_SIZE for MPICH-style launchers); 1 when none did.
 */
export function launchedWorldSize(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number(env.OMPI_COMM_WORLD_SIZE ?? env.PMI_SIZE ?? 1);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

/**
 * Joins the MPI world when this process was launched as one of several ranks (MPI_Init_thread on
 * the first call; later calls only change the timeout); otherwise the world is this process alone.
 * @param timeout seconds a collective waits for every rank (ddp_timeout).
 * @throws Error when launched with several ranks but the addon was built without MPI.
 */
export function joinWorld(timeout = DDP_TIMEOUT): World {
  checkTimeout(timeout, 'ddp_timeout');
  if (launchedWorldSize() === 1) return world;
  const addon = loadAddon();
  if (!addon.mpiCompiled) {
    throw new Error(
      `this process is one of ${launchedWorldSize()} MPI ranks, but the nodetune addon was built without MPI: ` +
        'apt-get install libopenmpi-dev openmpi-bin, then rebuild it (npx cmake-js compile)',
    );
  }
  world = addon.distributedInit({ timeout });
  joined = true;
  return world;
}

/** The world joined so far ({ rank: 0, size: 1 } before joinWorld, or without a launcher). */
export function currentWorld(): World {
  return world;
}

/** "data parallel: 2 ranks (MPI), rank 0 on host": what a run logs and records; null on one process. */
export function describeWorld(w: World = world): string | null {
  return w.size > 1 ? `data parallel: ${w.size} ranks (MPI), rank 0 on ${w.host}; --batch-size is the global batch` : null;
}

/** Rank 0, the one that writes (HF Trainer.is_world_process_zero). */
export function isMainProcess(): boolean {
  return world.rank === 0;
}

/**
 * The element-wise sum of `values` over all ranks (every rank gets it); `values` itself on one
 * process. @throws Error naming a rank that did not arrive within the timeout (`what` names the
 * collective in that message).
 */
export async function allReduceSum(values: Float64Array, what: string): Promise<Float64Array> {
  if (world.size === 1) return values;
  return loadAddon().distributedAllReduce(values, what);
}

/** Leaves the MPI world after a clean run (MPI_Finalize); nothing on one process. */
export function finishDistributed(): void {
  if (!joined) return;
  joined = false;
  loadAddon().distributedFinish(false);
}

/**
 * Ends the whole MPI job at once (MPI_Abort): after an error on this rank, the others would
 * otherwise wait for it until the timeout. Nothing on one process.
 */
export function abortDistributed(): void {
  if (!joined) return;
  joined = false;
  loadAddon().distributedFinish(true);
}

/**
 * Rows [lo, hi) of a global batch of `n` rows that rank `rank` of `size` runs: contiguous, the
 * first n mod size ranks one row more (an uneven last batch leaves later ranks fewer rows, or none).
 */
export function shardRange(n: number, rank: number, size: number): [number, number] {
  const base = Math.floor(n / size);
  const extra = n % size;
  const lo = rank * base + Math.min(rank, extra);
  return [lo, lo + base + (rank < extra ? 1 : 0)];
}

/**
 * Rows [lo, hi) of a collated batch, with rowOffset lo (0 < hi - lo). Labels are per row or per
 * token, whichever the batch holds (labels.length / batchSize each).
 */
export function shardBatch(batch: Batch, lo: number, hi: number): Batch {
  const T = batch.seqLen;
  const rows = (a: Int32Array | undefined, per: number) => a?.slice(lo * per, hi * per);
  const perLabel = batch.labels ? batch.labels.length / batch.batchSize : 0;
  return {
    input_ids: rows(batch.input_ids, T)!,
    attention_mask: rows(batch.attention_mask, T),
    token_type_ids: rows(batch.token_type_ids, T),
    labels: rows(batch.labels, perLabel),
    batchSize: hi - lo,
    seqLen: T,
    rowOffset: (batch.rowOffset ?? 0) + lo,
  };
}
