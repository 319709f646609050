// Embedding Sanitizer: the Train node's seed stays as set after a run.
// The frontend gives every INT input named "seed" a "control after generate" widget that starts at
// "randomize", which would train a different file on every queue. A training run is meant to be
// repeatable (same seed, same file), so a new Train node starts at "fixed". The input keeps its
// name and its control widget: saved workflows store that widget's value among their widget values,
// and removing it would shift every value after it. A workflow loaded from a file keeps the value it
// saved, since nodeCreated runs before the saved values are applied.
import { app } from "../../../scripts/app.js";

app.registerExtension({
  name: "EmbeddingSanitizer.TrainSeedFixed",
  nodeCreated(node) {
    if (node.comfyClass !== "EmbeddingSanitizerTrain") return;
    const seed = node.widgets?.find((w) => w.name === "seed");
    for (const control of seed?.linkedWidgets ?? []) {
      if (control.options?.values?.includes("fixed")) control.value = "fixed";
    }
  },
});
