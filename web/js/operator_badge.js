// Embedding Sanitizer: a badge on the canvas while the server's operator enforces sanitizing.
// The server answers GET /embedding_sanitizer/operator with {"enforced": false} or with the policy
// (file names, minimum intensity, concepts; never paths). Nothing is shown when it is off, or when
// an older pack without the route answers 404.
// Served at /extensions/<pack>/js/operator_badge.js, so /scripts/ is three levels up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const BADGE_ID = "embedding-sanitizer-operator-badge";

function describe(state) {
  const concepts = Array.isArray(state.concepts) ? state.concepts.join(", ") : "all concepts";
  const files = Object.entries(state.sanitizers || {})
    .map(([family, s]) => `${family}: ${s.file}${s.loaded ? "" : " (NOT LOADED)"}`).join("\n");
  if (state.ready === false && !state.sanitizers) return `Sanitizing is enforced, but ${state.problem}`;
  return `This server sanitizes every prompt (${concepts}, intensity at least ${state.min_intensity}).\n` +
    `Sanitizers:\n${files}` + (state.ready === false ? "\nPrompts for a model whose sanitizer did not load are refused." : "");
}

function showBadge(state) {
  if (document.getElementById(BADGE_ID)) return;
  const badge = document.createElement("div");
  badge.id = BADGE_ID;
  badge.textContent = state.ready === false ? "\u26a0 Sanitizing enforced (problem)" : "\u{1F6E1} Sanitizing enforced";
  badge.title = describe(state);
  Object.assign(badge.style, {
    position: "fixed", left: "50%", bottom: "12px", transform: "translateX(-50%)", zIndex: 1000,
    padding: "3px 10px", borderRadius: "12px", font: "12px sans-serif", pointerEvents: "auto",
    color: "var(--fg-color, #eee)", background: state.ready === false ? "rgba(190, 60, 40, 0.85)" : "rgba(40, 120, 70, 0.85)",
    boxShadow: "0 1px 4px rgba(0, 0, 0, 0.4)", userSelect: "none",
  });
  (app.canvasEl?.parentElement || document.body).appendChild(badge);
}

app.registerExtension({
  name: "EmbeddingSanitizer.OperatorBadge",
  async setup() {
    try {
      const response = await api.fetchApi("/embedding_sanitizer/operator");
      if (!response.ok) return;
      const state = await response.json();
      if (state.enforced) showBadge(state);
    } catch (error) {
      console.warn("Embedding Sanitizer: could not read the operator state", error);
    }
  },
});
