/** Classification metrics (scikit-learn conventions) and the eval_results.json shape. */
export {
  accuracy,
  computeMetrics,
  confusionMatrix,
  f1Score,
  formatClassificationReport,
  perClassScores,
} from './classification.js';
export type { Average, ClassScores, EvalResults } from './classification.js';
