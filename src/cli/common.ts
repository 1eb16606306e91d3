/** Shared pieces of the sub-commands: number parsing, --config files, tables. */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, extname, isAbsolute, relative, resolve } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import YAML from 'yaml';
import { assertModelFolder, parseJsonText } from '../io/model-folder.js';

/**
 * Commander parser for a finite decimal number (1, -2.5, .5, 3e-4). JavaScript's Number() would also
 * take '0x10' (16), '0b11' and '0o7': a flag value written so is a mistake, not a rate of 16.
 */
export function num(value: string): number {
  const x = Number(value);
  if (!/^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*$/i.test(value) || !Number.isFinite(x)) {
    throw new InvalidArgumentError(`'${value}' is not a number (expected decimal notation, e.g. 3, 0.5 or 2e-4).`);
  }
  return x;
}

/** Commander parser for --learning-rate: a number, or 'auto' (the learning-rate range test picks it). */
export function learningRate(value: string): number | 'auto' {
  if (value.trim().toLowerCase() === 'auto') return 'auto';
  const x = num(value);
  if (x < 0) throw new InvalidArgumentError(`'${value}' is negative; expected a rate ≥ 0 or 'auto'.`);
  return x;
}

/** Commander parser for an integer. */
export function int(value: string): number {
  const x = num(value);
  if (!Number.isInteger(x)) throw new InvalidArgumentError(`'${value}' is not an integer.`);
  return x;
}

/** Commander parser for an integer ≥ 1 (sizes, step counts, threads). */
export function positiveInt(value: string): number {
  const x = int(value);
  if (x < 1) throw new InvalidArgumentError(`'${value}' is not a positive integer.`);
  return x;
}

/** Commander parser for --max-length: an integer ≥ 2, since [CLS] and [SEP] take two tokens. */
export function maxLength(value: string): number {
  const x = int(value);
  if (x < 2) throw new InvalidArgumentError(`'${value}' is below 2: [CLS] and [SEP] take two tokens.`);
  return x;
}

const camel = (key: string) => key.replace(/[-_]([a-z0-9])/g, (_, c: string) => c.toUpperCase());
const kebab = (name: string) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** Hugging Face TrainingArguments names whose flag is spelled differently (HF name → option attribute). */
const HF_ALIASES: Record<string, string> = {
  per_device_train_batch_size: 'batchSize',
  per_device_eval_batch_size: 'evalBatchSize',
  num_train_epochs: 'epochs',
  label_smoothing_factor: 'labelSmoothing',
  output_dir: 'output',
  resume_from_checkpoint: 'resume',
};

const TRUE_WORDS = ['true', 'yes', 'on', '1'];
const FALSE_WORDS = ['false', 'no', 'off', '0', ''];

/** A boolean flag's value from a config file: true/false, or yes/no/on/off/1/0 as text (YAML 1.2 keeps `no` a string). */
function parseBoolean(raw: unknown, where: string): boolean {
  if (typeof raw === 'boolean') return raw;
  const word = String(raw).trim().toLowerCase();
  if (TRUE_WORDS.includes(word)) return true;
  if (FALSE_WORDS.includes(word)) return false;
  throw new Error(`${where}: expected true or false (or yes/no, 1/0), got ${JSON.stringify(raw)}`);
}

/** YAML.parse naming file:line:column (yaml puts them in linePos; its message repeats them with a code excerpt). */
function parseYaml(text: string, path: string): unknown {
  try {
    return YAML.parse(text);
  } catch (err) {
    const e = err as Error & { linePos?: Array<{ line: number; col: number }> };
    const at = e.linePos?.[0];
    const reason = e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
    throw new Error(`--config ${path}${at ? `:${at.line}:${at.col}` : ''}: invalid YAML: ${reason}`, { cause: err });
  }
}

/**
 * Merges `--config file.json|yaml` into the parsed options: keys may be written
 * as flags (`learning-rate`, `batch-size`) or Hugging Face TrainingArguments names
 * (`learning_rate`, `per_device_train_batch_size`); booleans also as yes/no, 1/0.
 * Flags given on the command line win over the file; the file wins over defaults.
 * @throws Error naming the file and the key that no flag matches, or the
 *   file:line:column of a syntax error.
 */
export async function applyConfigFile(cmd: Command, opts: Record<string, unknown>): Promise<void> {
  const path = opts.config as string | undefined;
  if (!path) return;
  const text = readFileSync(path, 'utf8');
  const data = extname(path) === '.json' ? parseJsonText(text, `--config ${path}`) : parseYaml(text, path);
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw new Error(`--config ${path}: expected a mapping of flag names to values`);
  const known = new Map(cmd.options.map((o) => [o.attributeName(), o]));
  for (const [key, raw] of Object.entries(data as Record<string, unknown>)) {
    const name = HF_ALIASES[key] !== undefined && known.has(HF_ALIASES[key]) ? HF_ALIASES[key] : camel(key);
    const option = known.get(name);
    if (!option || name === 'config') {
      const names = [...known.keys()].filter((k) => k !== 'config').map(kebab);
      const aliases = Object.keys(HF_ALIASES).filter((k) => known.has(HF_ALIASES[k]));
      throw new Error(
        `--config ${path}: unknown key '${key}' (expected a flag name: ${names.join(', ')}` +
          `${aliases.length ? `; or a Hugging Face name: ${aliases.join(', ')}` : ''}; '-' and '_' are interchangeable)`,
      );
    }
    if (cmd.getOptionValueSource(name) === 'cli') continue;
    let value = raw;
    if (option.isBoolean()) {
      value = parseBoolean(raw, `--config ${path}: '${key}'`);
    } else if (typeof raw !== 'boolean' && option.parseArg && raw !== null) {
      try {
        value = option.parseArg(String(raw), undefined as unknown as string);
      } catch (err) {
        throw new Error(`--config ${path}: '${key}': ${(err as Error).message}`);
      }
    }
    if (option.argChoices && !option.argChoices.includes(String(value))) {
      throw new Error(`--config ${path}: '${key}' must be one of ${option.argChoices.join(', ')}, got '${value}'`);
    }
    opts[name] = value;
  }
}

/** Options whose value is a path, so a raw ENOENT/EISDIR/EACCES can name the flag. */
const PATH_FLAGS = ['train', 'eval', 'data', 'input', 'model', 'output', 'config'];
const FILE_FLAGS = ['train', 'eval', 'data', 'input', 'config'];
const isFolder = (p: string) => existsSync(p) && statSync(p).isDirectory();
const WHAT: Record<string, string> = {
  ENOENT: 'does not exist',
  EISDIR: 'is a folder, expected a file',
  ENOTDIR: 'is not a folder',
  EACCES: 'is not readable/writable (permission denied)',
};

/**
 * Runs `fn`; a file-system error (ENOENT, EISDIR, ENOTDIR, EACCES) is rethrown naming
 * the flag whose value holds its path, and what went wrong in words (the original error
 * as its `cause`). An error with such a code that is already worded (its message starts
 * with its `path`, e.g. assertModelFolder's) gets the flag put in front; an ENOTDIR names
 * the file that stands where a folder was expected. Each flag in `folders` must name
 * an existing local folder before `fn` runs, and --model a model folder (config.json):
 * the library's own message about a file inside it would not name the flag.
 * Only for flags that take local paths (train's --model may be a Hub id).
 * @throws Error "--model ./modle does not exist", "--model x.txt is a file, expected a folder",
 *   "--output out.txt is a file, expected a folder" (for out.txt/onnx too).
 */
export async function explainPathErrors<T>(opts: Record<string, unknown>, fn: () => Promise<T>, folders: readonly string[] = []): Promise<T> {
  try {
    for (const flag of folders) requireFolder(opts, flag);
    return await fn();
  } catch (err) {
    throw explainPathError(opts, err);
  }
}

/** The error explainPathErrors throws for `err` (`err` itself when no flag holds its path). */
function explainPathError(opts: Record<string, unknown>, err: unknown): unknown {
  const e = err as NodeJS.ErrnoException;
  if (!e?.code || !WHAT[e.code]) return err;
  // readFileSync on a folder throws EISDIR without a path: the file flag naming a folder is the culprit.
  const path = e.path ?? (e.code === 'EISDIR' ? FILE_FLAGS.map((f) => opts[f]).find((v) => typeof v === 'string' && isFolder(v)) : undefined);
  if (typeof path !== 'string') return err;
  // The innermost match: export --output inside the --model folder names --output.
  const flag = PATH_FLAGS.filter((f) => typeof opts[f] === 'string' && isWithin(path, opts[f] as string))
    .sort((a, b) => resolve(String(opts[b])).length - resolve(String(opts[a])).length)[0];
  const named = flag ? `--${kebab(flag)} ` : '';
  const value = flag ? String(opts[flag]) : path;
  const same = resolve(path) === resolve(value);
  if (e.message.startsWith(`${path} `)) {
    if (!flag) return err;
    return new Error(same ? `${named}${value}${e.message.slice(path.length)}` : `${named}${value}: ${e.message}`, { cause: err });
  }
  const file = e.code === 'ENOTDIR' ? fileAncestor(path) : undefined;
  if (file !== undefined) {
    const where = resolve(file) === resolve(value) ? `${named}${value}` : `${named}${value}: ${file}`;
    return new Error(`${where} is a file, expected a folder`, { cause: err });
  }
  return new Error(`${named}${same ? value : path} ${WHAT[e.code]}`, { cause: err });
}

/** True when `path` is `folder` or inside it (compared as absolute paths). */
function isWithin(path: string, folder: string): boolean {
  const rel = relative(resolve(folder), resolve(path));
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** The file among `path` and its parents that made a folder operation fail with ENOTDIR. */
function fileAncestor(path: string): string | undefined {
  for (let p = path; p !== dirname(p); p = dirname(p)) {
    let isDir: boolean;
    try {
      isDir = statSync(p).isDirectory();
    } catch {
      continue; // ENOTDIR/ENOENT: the culprit is further up
    }
    return isDir ? undefined : p;
  }
  return undefined;
}

/** statSync's ENOENT/ENOTDIR/EACCES carry the path, which explainPathErrors words; a file is worded here. */
function requireFolder(opts: Record<string, unknown>, flag: string): void {
  const path = opts[flag];
  if (typeof path !== 'string') return;
  if (!statSync(path).isDirectory()) throw new Error(`--${kebab(flag)} ${path} is a file, expected a folder`);
  if (flag === 'model') assertModelFolder(path);
}

/**
 * train's warning for an explicit --max-length above the model's
 * max_position_embeddings (the tokenizer caps it there), on stderr.
 */
export function warnMaxLength(maxLength: number | undefined, maxPositionEmbeddings: number): void {
  if (maxLength !== undefined && maxLength > maxPositionEmbeddings) {
    process.stderr.write(`warning: --max-length ${maxLength} is above the model's max_position_embeddings; capped at ${maxPositionEmbeddings}\n`);
  }
}

/** Prints a two-column table to stderr. */
export function printTable(title: string, rows: Array<[string, string]>): void {
  const w = Math.max(...rows.map(([k]) => k.length));
  const lines = rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`);
  process.stderr.write(`\n${title}\n${'-'.repeat(title.length)}\n${lines.join('\n')}\n`);
}

/** Throws for required options given neither as flags nor in --config. */
export function requireOptions(opts: Record<string, unknown>, names: string[]): void {
  const missing = names.filter((n) => opts[n] === undefined || opts[n] === null || opts[n] === '');
  if (missing.length > 0) {
    throw new Error(`missing required option${missing.length > 1 ? 's' : ''} ${missing.map((n) => `--${n.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} (give ${missing.length > 1 ? 'them as flags' : 'it as a flag'} or in --config)`);
  }
}

/** The column flags every command that reads labelled data takes. */
export function withDataColumns(cmd: Command): Command {
  return cmd
    .option('--text-column <name>', 'column holding the text', 'text')
    .option('--text-pair-column <name>', 'column holding the second text of a pair')
    .option('--label-column <name>', 'column holding the label', 'label');
}

/** The values of withDataColumns' flags, under the option names fineTune and evaluateFile take. */
export function dataColumns(opts: Record<string, unknown>): { text_column: string; text_pair_column?: string; label_column: string } {
  return {
    text_column: opts.textColumn as string,
    text_pair_column: opts.textPairColumn as string | undefined,
    label_column: opts.labelColumn as string,
  };
}
