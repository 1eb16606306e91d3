/**
 * Label names ↔ class ids, in the form Hugging Face configs store them
 * (`id2label` with string keys, `label2id`, `num_labels`).
 */
import type { Example } from './read.js';

export interface LabelMap {
  /** Label name of each class id: labels[id], length num_labels. */
  labels: string[];
  /** For config.json: id (as a decimal string) → label. */
  id2label: Record<string, string>;
  /** For config.json: label → id. */
  label2id: Record<string, number>;
  num_labels: number;
  /** True when the map came from a model config: lookups ignore case. */
  caseInsensitive: boolean;
}

/** Where the examples came from, for error messages. */
export interface LabelSource {
  path: string;
  examples: Example[];
}

const INTEGER = /^[+-]?\d+$/;
const DEFAULT_HF_LABEL = /^LABEL_(\d+)$/;

/**
 * Builds the label map from the training labels.
 *
 * - With `label2id` from a model config (a model already fine-tuned for these
 *   classes): ids come from it; labels match case-insensitively. Hugging Face
 *   writes `LABEL_0..LABEL_{n-1}` into configs that never had labels; such a
 *   placeholder map is ignored when the training labels are not its names.
 * - Otherwise ids are assigned deterministically: if every label is an integer
 *   they are sorted numerically, else sorted by UTF-16 code units; ids are then
 *   0..n-1 in that order (integer labels are never used as ids directly, so
 *   labels {1, 5, 9} become ids {0, 1, 2}).
 *
 * @throws Error for a training label absent from the config's label2id
 *   (names file, line, label and the known labels), or a malformed label2id
 *   (ids not 0..n-1, two keys equal up to case).
 */
export function buildLabelMap(train: LabelSource, configLabel2id?: Record<string, number>): LabelMap {
  if (configLabel2id && Object.keys(configLabel2id).length > 0) {
    const fromConfig = labelMapFromConfig(configLabel2id);
    const usable = !isPlaceholder(configLabel2id) || train.examples.every((e) => lookupLabel(fromConfig, e.label) !== undefined);
    if (usable) {
      encodeLabels(train, fromConfig);
      return fromConfig;
    }
  }
  return labelMapFromNames(sortedLabels(train.examples.map((e) => e.label)));
}

/**
 * Class ids of `source.examples` (Int32Array, length = number of examples).
 * Use it for the eval file too: a label not in the map is an error.
 * @throws Error `path:line: label "X" was not seen in training; known labels: ...`
 */
export function encodeLabels(source: LabelSource, map: LabelMap): Int32Array {
  const ids = new Int32Array(source.examples.length);
  source.examples.forEach((e, i) => {
    const id = lookupLabel(map, e.label);
    if (id === undefined) {
      const known = map.labels.length > 20 ? `${map.labels.slice(0, 20).join(', ')}, ... (${map.num_labels} in all)` : map.labels.join(', ');
      const seen = map.caseInsensitive ? "is not in the model config's label2id" : 'was not seen in training';
      throw new Error(`${source.path}:${e.line}: label "${e.label}" ${seen}; known labels: ${known}`);
    }
    ids[i] = id;
  });
  return ids;
}

/** The id of `label`, or undefined. */
export function lookupLabel(map: LabelMap, label: string): number | undefined {
  const id = Object.hasOwn(map.label2id, label) ? map.label2id[label] : undefined;
  if (id !== undefined) return id;
  if (!map.caseInsensitive) return undefined;
  const lower = label.toLowerCase();
  const i = map.labels.findIndex((l) => l.toLowerCase() === lower);
  return i >= 0 ? i : undefined;
}

/** Unique labels in id order: numeric if all are integers, else by code units. */
export function sortedLabels(labels: string[]): string[] {
  const unique = [...new Set(labels)];
  const byCodeUnits = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  if (unique.every((l) => INTEGER.test(l))) {
    return unique.sort((a, b) => Number(a) - Number(b) || byCodeUnits(a, b));
  }
  return unique.sort(byCodeUnits);
}

/** A label map with ids 0..n-1 in the order of `labels`. */
export function labelMapFromNames(labels: string[], caseInsensitive = false): LabelMap {
  const id2label: Record<string, string> = {};
  // No prototype: a label named "__proto__" or "constructor" must be an ordinary key.
  const label2id: Record<string, number> = Object.create(null);
  labels.forEach((l, i) => {
    id2label[String(i)] = l;
    label2id[l] = i;
  });
  return { labels: [...labels], id2label, label2id, num_labels: labels.length, caseInsensitive };
}

function labelMapFromConfig(label2id: Record<string, number>): LabelMap {
  const n = Object.keys(label2id).length;
  const labels = new Array<string>(n);
  const lowered = new Map<string, string>();
  for (const [name, id] of Object.entries(label2id)) {
    if (!Number.isInteger(id) || id < 0 || id >= n || labels[id] !== undefined) {
      throw new Error(`config label2id: "${name}" → ${id}; expected ids 0..${n - 1}, each used once`);
    }
    const other = lowered.get(name.toLowerCase());
    if (other !== undefined) throw new Error(`config label2id: "${other}" and "${name}" differ only in case; labels are matched case-insensitively`);
    lowered.set(name.toLowerCase(), name);
    labels[id] = name;
  }
  return labelMapFromNames(labels, true);
}

function isPlaceholder(label2id: Record<string, number>): boolean {
  return Object.entries(label2id).every(([name, id]) => DEFAULT_HF_LABEL.exec(name)?.[1] === String(id));
}
