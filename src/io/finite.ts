/**
 * The one check that a tensor read from an untrusted file holds numbers: a NaN or an infinity in a
 * weight fails no product, it silently poisons every output (llama.cpp loads such a file and
 * answers with end-of-text tokens).
 */

/** The index of the first NaN or infinity in `data`, or -1 (a JS loop: 2 ns a value). */
export function firstNonFiniteIndex(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  return -1;
}

/**
 * @param data the tensor's values (row-major).
 * @param shape its shape; a 2-D element is also named by [row, column].
 * @param where the file (and context) for the message.
 * @param name the tensor's name.
 * @param find the search (the engine's native firstNonFinite for a whole model's weights).
 * @throws Error `${where}: tensor '${name}' holds a non-finite value (NaN) at index i [row, column]`.
 */
export function assertFiniteTensor(data: Float32Array, shape: readonly number[], where: string, name: string, find: (data: Float32Array) => number = firstNonFiniteIndex): void {
  const i = find(data);
  if (i < 0) return;
  const at = shape.length === 2 ? ` [${Math.floor(i / shape[1])}, ${i % shape[1]}]` : '';
  throw new Error(`${where}: tensor '${name}' holds a non-finite value (${data[i]}) at index ${i}${at}`);
}
