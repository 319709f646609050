// Embedding Sanitizer: shows the per-token harmfulness scores on the Sanitize Conditioning and
// CLIP Text Encode (Sanitized) nodes after they run. The node sends
// {"ui": {"token_scores": [{label, labelled, prompt_score, cosine, tokens: [{token, score, gate,
// concept, erased, position}]}]}}; padding is never sent. The display is a DOM widget with
// serialize: false, made on the first run, so it never enters the workflow's widgets_values.
// Served at /extensions/<pack>/js/token_scores.js, so /scripts/app.js is three levels up.
import { app } from "../../../scripts/app.js";

const NODES = new Set(["EmbeddingSanitizerApply", "EmbeddingSanitizerCLIPTextEncode"]);
const WIDGET = "sanitizer_token_scores";
const STYLE_ID = "embedding-sanitizer-token-style";

// Colours work on light and dark themes: a translucent tint behind text that keeps the theme's colour.
const CSS = `
.es-tokens { font: 12px/1.6 sans-serif; color: var(--input-text, var(--fg-color, inherit));
  background: var(--comfy-input-bg, transparent); border-radius: 4px; padding: 4px 6px;
  overflow-y: auto; box-sizing: border-box; height: 100%; }
.es-tokens .es-head { opacity: 0.8; margin: 2px 0; font-size: 11px; }
.es-tokens .es-tok { display: inline-block; margin: 1px 2px; padding: 0 4px; border-radius: 3px;
  border: 1px solid transparent; white-space: pre; }
.es-tokens .es-tok.es-erased { text-decoration: line-through; text-decoration-thickness: 2px;
  border-color: rgb(220, 38, 38); font-weight: 600; }
.es-tokens .es-score { font-size: 9px; opacity: 0.75; margin-left: 2px; vertical-align: super; }
.es-tokens .es-legend { font-size: 10px; opacity: 0.7; margin-top: 4px; }
`;

function ensureStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}

// Green (safe) -> amber -> red (harmful), alpha grows with the score so low scores stay quiet.
export function tokenColour(score) {
  const s = Math.max(0, Math.min(1, Number(score) || 0));
  const hue = 120 * (1 - s);
  const alpha = 0.18 + 0.5 * s;
  return `hsla(${hue.toFixed(0)}, 85%, 50%, ${alpha.toFixed(2)})`;
}

export function renderScores(container, entries) {
  container.replaceChildren();
  if (!Array.isArray(entries) || entries.length === 0) {
    container.textContent = "Run the workflow to see token scores.";
    return;
  }
  for (const entry of entries) {
    if (!entry || !Array.isArray(entry.tokens)) continue;
    const head = document.createElement("div");
    head.className = "es-head";
    const erased = entry.tokens.filter((t) => t.erased).length;
    const score = Number(entry.prompt_score ?? 0).toFixed(2);
    head.textContent = (entry.label ? `${entry.label} · ` : "") + `prompt score ${score} · erased ${erased}` +
      (entry.labelled === false ? " · connect clip + text for words" : "");
    container.appendChild(head);
    const line = document.createElement("div");
    for (const t of entry.tokens) {
      const span = document.createElement("span");
      span.className = "es-tok" + (t.erased ? " es-erased" : "");
      span.style.backgroundColor = tokenColour(t.score);
      span.textContent = String(t.token ?? "");
      span.title = `${t.token}: score ${Number(t.score).toFixed(3)} (${t.concept}), gate ${Number(t.gate).toFixed(3)}` +
        (t.erased ? " — erased" : "");
      const num = document.createElement("span");
      num.className = "es-score";
      num.textContent = Number(t.score).toFixed(2);
      span.appendChild(num);
      line.appendChild(span);
    }
    container.appendChild(line);
  }
  const legend = document.createElement("div");
  legend.className = "es-legend";
  legend.textContent = "colour = harmfulness score (green 0 → red 1); struck through = erased";
  container.appendChild(legend);
}

function scoreWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (widget) return widget;
  if (typeof node.addDOMWidget !== "function") return null;   // very old frontends: no display
  ensureStyle();
  const el = document.createElement("div");
  el.className = "es-tokens";
  widget = node.addDOMWidget(WIDGET, "es_token_scores", el, {
    serialize: false,
    hideOnZoom: false,
    getValue() { return undefined; },
    setValue() {},
  });
  widget.serialize = false;          // older frontends read this flag on the widget itself
  widget.element = widget.element ?? el;
  widget.computeSize = (width) => [width, Math.max(60, Math.min(240, el.scrollHeight + 8))];
  return widget;
}

app.registerExtension({
  name: "EmbeddingSanitizer.TokenScores",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const entries = message?.token_scores;
      if (!Array.isArray(entries)) return result;
      try {
        const widget = scoreWidget(this);
        if (!widget) return result;
        const el = widget.element ?? widget.inputEl;
        renderScores(el, entries);
        const size = this.computeSize();
        this.setSize([Math.max(this.size[0], size[0], 360), Math.max(this.size[1], size[1])]);
        this.setDirtyCanvas?.(true, true);
      } catch (err) {
        console.warn("[Embedding Sanitizer] could not show token scores", err);
      }
      return result;
    };
  },
});
