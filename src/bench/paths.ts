/** Where the benchmark tools find the repository's own files. */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: this file runs from dist/src/bench/. */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '../../..');

/** build/Release/<name>, where CMake puts the native tools. */
export function releaseBinary(name: string): string {
  return join(repoRoot, 'build', 'Release', name);
}
