import { checkDevice } from '../../src/engine.js';

/**
 * Why this CPU or build cannot read a causal LM's weights in bf16 (checkDevice's
 * message), or undefined where it can: tests of the bf16 path assert that
 * message on such machines instead of the results.
 */
export function bf16Unsupported(): string | undefined {
  try {
    checkDevice('cpu', 'bf16', true);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
