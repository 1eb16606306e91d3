/** Shared pieces of the sub-commands: number parsing, --config files, tables. */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import YAML from 'yaml';

/** Commander parser for a finite number. */
export function num(value: string): number {
  const x = Number(value);
  if (value.trim() === '' || !Number.isFinite(x)) throw new InvalidArgumentError(`'${value}' is not a number.`);
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

const camel = (key: string) => key.replace(/[-_]([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/**
 * Merges `--config file.json|yaml` into the parsed options: keys may be written
 * as flags (`learning-rate`), Hugging Face names (`learning_rate`) or camelCase.
 * Flags given on the command line win over the file; the file wins over defaults.
 * @throws Error naming the file and the key that no flag matches, or a parse error.
 */
export async function applyConfigFile(cmd: Command, opts: Record<string, unknown>): Promise<void> {
  const path = opts.config as string | undefined;
  if (!path) return;
  const text = readFileSync(path, 'utf8');
  let data: unknown;
  try {
    data = extname(path) === '.json' ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw new Error(`--config ${path}: cannot parse: ${(err as Error).message}`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw new Error(`--config ${path}: expected a mapping of flag names to values`);
  const known = new Map(cmd.options.map((o) => [o.attributeName(), o]));
  for (const [key, raw] of Object.entries(data as Record<string, unknown>)) {
    const name = camel(key);
    const option = known.get(name);
    if (!option || name === 'config') {
      throw new Error(`--config ${path}: unknown key '${key}' (expected one of: ${[...known.keys()].filter((k) => k !== 'config').join(', ')})`);
    }
    if (cmd.getOptionValueSource(name) === 'cli') continue;
    let value = raw;
    if (typeof raw !== 'boolean' && option.parseArg && raw !== null) {
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
    throw new Error(`missing required option${missing.length > 1 ? 's' : ''} ${missing.map((n) => `--${n.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} (give it as a flag or in --config)`);
  }
}
