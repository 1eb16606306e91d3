/**
 * Export a fine-tuned model folder to the layout transformers.js and
 * onnxruntime users load offline: config.json, tokenizer.json,
 * tokenizer_config.json (+ vocab.txt, special_tokens_map.json) and
 * onnx/model.onnx (+ onnx/model.onnx_data for models over 2 GB).
 */
import { existsSync, statSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { copyFileAtomic, writeFileAtomic } from '../io/atomic.js';
import { loadModelFolder, TOKENIZER_FILES } from '../io/model-folder.js';
import { checkOpset, exportOnnx, type ExportOptions, type ExportResult } from './export.js';

/** Files copied next to onnx/ when exporting into another folder. */
const COMPANION_FILES = ['config.json', ...TOKENIZER_FILES];

export interface FolderExportOptions extends ExportOptions {
  /** Destination folder; default: the model folder itself. */
  output?: string;
}

export interface FolderExportResult extends ExportResult {
  /** The folder that now holds config.json, tokenizer files and onnx/model.onnx. */
  folder: string;
  /** Things a consumer may trip over (e.g. no tokenizer.json for transformers.js). */
  warnings: string[];
}

/**
 * Write `<output>/onnx/model.onnx` for the model in `folder`, copying
 * config.json and the tokenizer files when `output` is another folder.
 *
 * @throws Error, before loading anything, for an unsupported opset or an
 *   `output` that is a file ("<output> is a file, expected a folder", code
 *   ENOTDIR and path as fs errors); when the folder cannot be loaded (see
 *   loadModelFolder); when its classifier head or any other weight is missing
 *   from model.safetensors (a random head is not worth exporting: fine-tune
 *   first); or on export errors.
 */
export async function exportModelFolder(folder: string, options: FolderExportOptions = {}): Promise<FolderExportResult> {
  checkOpset(options.opset ?? 17);
  if (options.output !== undefined && statSync(options.output, { throwIfNoEntry: false })?.isFile()) {
    throw Object.assign(new Error(`${options.output} is a file, expected a folder`), { code: 'ENOTDIR', path: options.output });
  }
  const { config, weights, newlyInitialized } = await loadModelFolder(folder);
  if (newlyInitialized.length > 0) {
    throw new Error(`${folder}: model.safetensors has no ${newlyInitialized.join(', ')}; fine-tune the model before exporting it`);
  }
  const out = options.output ?? folder;
  await mkdir(join(out, 'onnx'), { recursive: true });
  if (resolve(out) !== resolve(folder)) {
    for (const name of COMPANION_FILES) {
      if (existsSync(join(folder, name))) await copyFileAtomic(join(folder, name), join(out, name));
    }
  }
  const warnings: string[] = [];
  if (!existsSync(join(out, 'tokenizer.json'))) warnings.push(`${out} has no tokenizer.json; transformers.js needs one to tokenize`);
  const result = await exportOnnx({ config, weights }, join(out, 'onnx', 'model.onnx'), options);
  await markExternalData(join(out, 'config.json'), result.externalDataPath !== undefined);
  return { ...result, folder: out, warnings };
}

/**
 * transformers.js fetches model.onnx_data only when config.json says so
 * (`transformers.js_config.use_external_data_format`, a chunk count per file);
 * onnxruntime-node finds it on its own. Keeps that entry in step with the export.
 */
async function markExternalData(configPath: string, external: boolean): Promise<void> {
  const json = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, any>;
  const tjs = { ...(json['transformers.js_config'] ?? {}) };
  const formats = { ...(tjs.use_external_data_format ?? {}) };
  if (external === Boolean(formats['model.onnx'])) return;
  if (external) formats['model.onnx'] = 1;
  else delete formats['model.onnx'];
  tjs.use_external_data_format = formats;
  if (Object.keys(formats).length === 0) delete tjs.use_external_data_format;
  if (Object.keys(tjs).length === 0) delete json['transformers.js_config'];
  else json['transformers.js_config'] = tjs;
  await writeFileAtomic(configPath, `${JSON.stringify(json, null, 2)}\n`);
}
