/**
 * Atomic file writes: write a temporary file in the destination folder, fsync
 * it, rename it over the destination, then fsync the folder. A crash or an
 * exception at any point leaves either the old file or the new one, never a
 * half-written file (rename(2) within one filesystem is atomic on POSIX).
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, copyFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Temporary name next to `path`; starts with '.' so folder listings skip it. */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/** Fsync a folder so that a rename inside it survives a power loss (best effort: some filesystems refuse). */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // Directory fsync is unsupported on some platforms (Windows); the rename is still atomic.
  } finally {
    await fh?.close();
  }
}

/**
 * Write `chunks` (in order) to `path` atomically.
 *
 * @param path destination file; its folder must exist.
 * @param chunks bytes or strings (UTF-8) written back to back.
 * @throws Error naming `path` when the write, fsync or rename fails; the temporary file is removed.
 */
export async function writeFileAtomic(path: string, chunks: Array<Uint8Array | string> | Uint8Array | string): Promise<void> {
  const list = Array.isArray(chunks) ? chunks : [chunks];
  const tmp = tempPathFor(path);
  try {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      for (const chunk of list) await fh.writeFile(chunk);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new Error(`could not write ${path}: ${(err as Error).message}`, { cause: err });
  }
  await fsyncDir(dirname(path));
}

/**
 * Copy `src` to `dest` atomically (copy to a temporary file in dest's folder, fsync, rename).
 *
 * @throws Error naming both paths when the copy fails.
 */
export async function copyFileAtomic(src: string, dest: string): Promise<void> {
  const tmp = tempPathFor(dest);
  try {
    await copyFile(src, tmp);
    const fh = await open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, dest);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new Error(`could not copy ${src} to ${dest}: ${(err as Error).message}`, { cause: err });
  }
  await fsyncDir(dirname(dest));
}
