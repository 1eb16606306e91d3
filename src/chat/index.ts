export {
  CHAT_ROLES,
  renderChatTemplate,
  resolveChatTemplate,
  validateChatMessages,
  type ChatContentPart,
  type ChatMessage,
  type ChatTemplateContext,
  type ChatTemplateSet,
  type ChatToolCall,
  type RenderChatOptions,
} from './template.js';
export {
  renderChatWithAssistantSpans,
  tokenizeChatSpans,
  type AssistantSpan,
  type AssistantSpanOptions,
  type AssistantTokenSpan,
  type ByteOffsetTokenizer,
  type EncodedChat,
} from './spans.js';
