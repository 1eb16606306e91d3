/**
 * `nodetune pretrain`: domain-adaptive pre-training of a BERT-family encoder with the
 * masked-language-model loss on unlabelled text; its output folder is what `nodetune train
 * --model` fine-tunes next. Flags follow Hugging Face TrainingArguments (as `nodetune train`) and
 * run_mlm.py / DataCollatorForLanguageModeling names in kebab case.
 */
import type { Command } from 'commander';
import { pretrainMaskedLM, type PretrainOptions, type PretrainResult } from '../tasks/masked-lm/pretrain.js';
import { applyConfigFile, explainPathErrors, maxLength, num, printTable, requireOptions } from './common.js';
import { attachProgress, logLine, runTrainingCommand, stopOnInterrupt, trainingArgumentsOf, withRunFlags, withTrainingFlags } from './training.js';

export function registerPretrain(program: Command): void {
  const cmd = program
    .command('pretrain')
    .description('continue pre-training a BERT-family encoder on unlabelled domain text (masked-language-model loss); `train --model <output>` fine-tunes the result')
    .option('--model <folder|repo-id>', 'Hugging Face BERT folder or Hub repo id')
    .option('--train <file>', 'unlabelled texts: .txt (one per line), .csv, .tsv or .jsonl (with --text-column)')
    .option('--eval <file>', 'evaluation texts; default: --validation-split of --train held out')
    .option('--text-column <name>', 'column holding the text (.csv, .tsv, .jsonl)', 'text')
    .option('--output <folder>', 'output folder (BertForMaskedLM model folder, eval_results.json, training_log.jsonl, report.html)')
    .option('--validation-split <fraction>', 'held-out fraction when --eval is absent (0 = no evaluation)', num, 0.05)
    .option('--max-length <n>', 'truncate each text to n tokens', maxLength, 128)
    .option('--mlm-probability <p>', 'probability of masking a token (80% [MASK], 10% random, 10% unchanged)', num, 0.15)
    .option('--whole-word-mask', 'mask whole words (all of their WordPiece pieces) instead of single tokens');
  withRunFlags(
    withTrainingFlags(cmd, {
      batchSize: 32,
      evalBatchSize: 64,
      learningRate: 5e-5,
      weightDecay: 0,
      gradientAccumulationHelp: 'micro-batches per optimizer step (loss normalised over their masked tokens)',
      evalStrategyHelp: 'when to evaluate the masked-token loss',
      metricForBestModel: 'loss',
      metricHelp: 'loss | perplexity',
      seedHelp: 'seed of data order, masks, dropout and a new prediction head',
    }),
  ).action(async (opts: Record<string, unknown>, command: Command) => {
    await explainPathErrors(opts, async () => {
      await applyConfigFile(command, opts);
      requireOptions(opts, ['model', 'train', 'output']);
      await runTrainingCommand(opts, () => pretrainMaskedLM(toOptions(opts)), printResult);
    });
  });
}

function toOptions(o: Record<string, unknown>): PretrainOptions {
  const opts: PretrainOptions = {
    ...trainingArgumentsOf(o),
    model: String(o.model),
    train_file: String(o.train),
    eval_file: o.eval as string | undefined,
    text_column: o.textColumn as string,
    validation_split: o.validationSplit as number,
    max_length: o.maxLength as number,
    mlm_probability: o.mlmProbability as number,
    whole_word_mask: o.wholeWordMask === true,
    threads: o.threads as number | undefined,
    device: o.device as string,
    overwrite_output_dir: o.overwriteOutputDir === true,
    log: logLine,
    onTrainer: (trainer) => {
      attachProgress(trainer, { name: 'pretrain', rate: 'tokens', evalLine: (e) => `loss ${e.loss.toFixed(4)} perplexity ${e.perplexity.toFixed(3)}` });
      stopOnInterrupt(trainer);
    },
  };
  return Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as PretrainOptions;
}

function printResult(r: PretrainResult): void {
  const e = r.eval;
  printTable('nodetune pretrain: result', [
    ['output', r.output_dir],
    ['train / eval texts', `${r.train_examples} / ${r.eval_examples}`],
    ['steps', String(r.global_step)],
    ...(e
      ? ([['eval loss', e.loss.toFixed(4)], ['perplexity', e.perplexity.toFixed(3)], ['masked tokens', String(e.eval_tokens)]] as Array<[string, string]>)
      : ([['eval', 'none (--validation-split 0 and no --eval)']] as Array<[string, string]>)),
    ['wall time', `${r.seconds.toFixed(0)} s`],
    ['next', `nodetune train --model ${r.output_dir} --train <labelled data> ...`],
  ]);
}
