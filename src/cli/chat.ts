/**
 * `nodetune chat --model <gguf | folder | hub id>`: an interactive chat in the terminal. Each
 * line read is a user message; the reply streams to stdout and joins the history, which the
 * chat template renders whole every turn. /reset clears the history (the --system message
 * stays), /exit or end of input (Ctrl-D) ends; Ctrl-C stops a reply mid-way, or ends the chat
 * at the prompt. Lines come from readline, so piped stdin works the same (one message a line).
 */
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import type { ChatMessage } from '../chat/template.js';
import { addGenerationOptions, generationOptions, loadFromFlags } from './generate.js';

export function registerChat(program: Command): void {
  addGenerationOptions(
    program
      .command('chat')
      .description('chat with a causal LM in the terminal (history kept; /reset clears it, /exit or Ctrl-D ends)'),
  )
    .option('--verbose', 'after each reply, print token counts and the finish reason to stderr')
    .action(async (opts: Record<string, unknown>) => {
      await chat(opts);
    });
}

async function chat(opts: Record<string, unknown>): Promise<void> {
  const options = generationOptions(opts);
  const llm = await loadFromFlags(opts);
  const system: ChatMessage[] = opts.system !== undefined ? [{ role: 'system', content: String(opts.system) }] : [];
  let history: ChatMessage[] = [...system];
  const tty = Boolean(process.stdin.isTTY && process.stdout.isTTY);
  const rl = createInterface({ input: process.stdin, output: tty ? process.stdout : undefined, terminal: tty, prompt: '> ' });
  let controller: AbortController | undefined;
  // While a reply streams, Ctrl-C stops it; at the prompt it ends the chat.
  rl.on('SIGINT', () => {
    if (controller) controller.abort();
    else rl.close();
  });
  const onSigint = () => controller?.abort();
  process.on('SIGINT', onSigint);
  if (tty) process.stderr.write(`${llm.source.path}: type a message; /reset clears the history, /exit or Ctrl-D ends\n`);
  try {
    if (tty) rl.prompt();
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === '/exit' || line === '/quit') break;
      if (line === '/reset') {
        history = [...system];
        process.stderr.write('(history cleared)\n');
      } else if (line !== '') {
        await turn(line);
      }
      if (tty) rl.prompt();
    }
  } finally {
    process.off('SIGINT', onSigint);
    rl.close();
    await llm.dispose();
  }

  async function turn(line: string): Promise<void> {
    const messages: ChatMessage[] = [...history, { role: 'user', content: line }];
    controller = new AbortController();
    let text = '';
    try {
      const result = await llm.generate(messages, { ...options, signal: controller.signal, onTextChunk: (d) => {
        text += d;
        process.stdout.write(d);
      } });
      if (!text.endsWith('\n')) process.stdout.write('\n');
      if (opts.verbose) {
        const { promptTokens, completionTokens } = result.usage;
        process.stderr.write(`[${promptTokens} prompt tokens, ${completionTokens} new, ${result.finishReason}]\n`);
      }
      history = [...messages, { role: 'assistant', content: result.text }];
    } catch (err) {
      // A turn that cannot run (a history grown past the context) leaves the history as it was.
      if (text && !text.endsWith('\n')) process.stdout.write('\n');
      const msg = ((err as Error)?.message ?? String(err)).replace('maxNewTokens', '--max-new-tokens');
      const tooLong = /^the prompt is \d+ tokens?;/.test(msg);
      process.stderr.write(`nodetune chat: ${tooLong ? msg.replace('the prompt', 'the conversation') + '; /reset clears the history' : msg}\n`);
    } finally {
      controller = undefined;
    }
  }
}
