/**
 * The model configuration, by the field names of Hugging Face `BertConfig`
 * (transformers/models/bert/configuration_bert.py), plus the sequence
 * classification head fields of `PretrainedConfig`.
 */
export interface BertConfig {
  model_type?: string;
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  max_position_embeddings: number;
  type_vocab_size: number;
  /** LayerNorm epsilon; BERT uses 1e-12. */
  layer_norm_eps: number;
  hidden_dropout_prob: number;
  attention_probs_dropout_prob: number;
  /** Dropout before the classifier; null means hidden_dropout_prob (HF). */
  classifier_dropout?: number | null;
  initializer_range: number;
  hidden_act?: string;
  position_embedding_type?: string;
  num_labels: number;
  id2label?: Record<string, string>;
  label2id?: Record<string, number>;
  problem_type?: string;
  pad_token_id?: number;
}

/** BertConfig defaults (bert-base-uncased), as Hugging Face defines them. */
export const BERT_DEFAULTS: Omit<BertConfig, 'num_labels'> = {
  model_type: 'bert',
  vocab_size: 30522,
  hidden_size: 768,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  intermediate_size: 3072,
  max_position_embeddings: 512,
  type_vocab_size: 2,
  layer_norm_eps: 1e-12,
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  classifier_dropout: null,
  initializer_range: 0.02,
  hidden_act: 'gelu',
  position_embedding_type: 'absolute',
};

/** The Hugging Face BERT model classes nodetune trains: one encoder, two heads. */
export type BertArchitecture = 'BertForSequenceClassification' | 'BertForMaskedLM';

/**
 * Checkpoint key names (with the `bert.` prefix) and shapes of every parameter of
 * `architecture`, in Hugging Face's state_dict order. BertForMaskedLM has no
 * pooler (add_pooling_layer=False) and its decoder weight is the tied word
 * embeddings, so its head adds `cls.predictions.transform.*` and `cls.predictions.bias`.
 */
export function parameterShapes(config: BertConfig, architecture: BertArchitecture = 'BertForSequenceClassification'): Array<[string, number[]]> {
  const C = config.hidden_size;
  const I = config.intermediate_size;
  const out: Array<[string, number[]]> = [
    ['bert.embeddings.word_embeddings.weight', [config.vocab_size, C]],
    ['bert.embeddings.position_embeddings.weight', [config.max_position_embeddings, C]],
    ['bert.embeddings.token_type_embeddings.weight', [config.type_vocab_size, C]],
    ['bert.embeddings.LayerNorm.weight', [C]],
    ['bert.embeddings.LayerNorm.bias', [C]],
  ];
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `bert.encoder.layer.${l}.`;
    out.push(
      [`${p}attention.self.query.weight`, [C, C]],
      [`${p}attention.self.query.bias`, [C]],
      [`${p}attention.self.key.weight`, [C, C]],
      [`${p}attention.self.key.bias`, [C]],
      [`${p}attention.self.value.weight`, [C, C]],
      [`${p}attention.self.value.bias`, [C]],
      [`${p}attention.output.dense.weight`, [C, C]],
      [`${p}attention.output.dense.bias`, [C]],
      [`${p}attention.output.LayerNorm.weight`, [C]],
      [`${p}attention.output.LayerNorm.bias`, [C]],
      [`${p}intermediate.dense.weight`, [I, C]],
      [`${p}intermediate.dense.bias`, [I]],
      [`${p}output.dense.weight`, [C, I]],
      [`${p}output.dense.bias`, [C]],
      [`${p}output.LayerNorm.weight`, [C]],
      [`${p}output.LayerNorm.bias`, [C]],
    );
  }
  if (architecture === 'BertForMaskedLM') {
    out.push(
      ['cls.predictions.bias', [config.vocab_size]],
      ['cls.predictions.transform.dense.weight', [C, C]],
      ['cls.predictions.transform.dense.bias', [C]],
      ['cls.predictions.transform.LayerNorm.weight', [C]],
      ['cls.predictions.transform.LayerNorm.bias', [C]],
    );
    return out;
  }
  out.push(
    ['bert.pooler.dense.weight', [C, C]],
    ['bert.pooler.dense.bias', [C]],
    ['classifier.weight', [config.num_labels, C]],
    ['classifier.bias', [config.num_labels]],
  );
  return out;
}
