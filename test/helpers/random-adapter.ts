// A PEFT LoRA adapter as `nodetune sft` leaves it in its run folder, with random
// v_proj weights: the LLM tests' way to check that an adapter is applied (its
// values are large enough to move the greedy argmax of SmolLM2-135M).
import { savePeftAdapter, type NamedTensors } from '../../src/io/peft.js';
import { peftKey, type LlamaConfig } from '../../src/models/llama.js';

/**
 * Writes adapter_config.json + adapter_model.safetensors to `dir`: r 4, lora_alpha 32, v_proj
 * only, every layer, values from a fixed linear congruential sequence started at `seed`.
 */
export async function writeRandomVProjAdapter(dir: string, config: LlamaConfig, baseModel: string, seed = 12345): Promise<void> {
  const r = 4;
  const out = config.num_key_value_heads * config.head_dim;
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5) * 0.5;
  const tensors: NamedTensors = new Map();
  for (let l = 0; l < config.num_hidden_layers; l++) {
    tensors.set(peftKey(l, 'v_proj', 'A'), { shape: [r, config.hidden_size], data: Float32Array.from({ length: r * config.hidden_size }, rnd) });
    tensors.set(peftKey(l, 'v_proj', 'B'), { shape: [out, r], data: Float32Array.from({ length: out * r }, rnd) });
  }
  await savePeftAdapter(dir, { lora: { r, lora_alpha: 32, target_modules: ['v_proj'], lora_dropout: 0 }, tensors, baseModel });
}
