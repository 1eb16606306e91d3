export { writeFileAtomic, copyFileAtomic } from './atomic.js';
export { SeededRng } from './rng.js';
export {
  readSafetensors,
  writeSafetensors,
  encodeSafetensors,
  decodeTensorBytes,
  DTYPE_SIZE,
  MAX_HEADER_BYTES,
  type SafetensorsContents,
  type SafetensorsDtype,
  type Tensor,
  type TensorData,
  type TensorToWrite,
} from './safetensors.js';
export {
  loadModelFolder,
  saveModelFolder,
  parseBertConfig,
  configToJson,
  mapCheckpointKey,
  formatNewlyInitializedMessage,
  formatUnusedWeightsMessage,
  pythonListRepr,
  DEFAULT_INIT_SEED,
  MODEL_CLASS,
  SUPPORTED_MODEL_TYPES,
  TOKENIZER_FILES,
  type LoadModelOptions,
  type LoadedModel,
  type SaveModelOptions,
} from './model-folder.js';
export {
  pull,
  resolveModel,
  defaultCacheDir,
  repoCacheFolder,
  validateRepoId,
  MODEL_FILES,
  DEFAULT_ENDPOINT,
  type PullOptions,
  type PullResult,
} from './hub.js';
