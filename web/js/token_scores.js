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
  background: var(--comfy-input-bg, transparent); border-radius: 4px;
  overflow-y: auto; box-sizing: border-box; height: 100%; }
.es-tokens .es-body { padding: 4px 6px; }
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

// The display is as tall as its content, up to MAX_BOX_HEIGHT (longer reports scroll). A run grows
// the node by what the display needs, but only into empty canvas: never over the node below it.
const MAX_BOX_HEIGHT = 240;
const MIN_BOX_HEIGHT = 60;     // a header and a row of tokens, when there is no room for more
const GAP_BELOW = 10;          // kept free between the grown node and the node below it

// Canvas units the node may grow downwards before it reaches another node under it.
function roomBelow(node) {
  const [x, y] = node.pos;
  const bottom = y + node.size[1];
  let room = Infinity;
  for (const other of node.graph?.nodes ?? node.graph?._nodes ?? []) {
    if (other === node) continue;
    const [left, top, width] = other.boundingRect ??
      [other.pos[0], other.pos[1] - (globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30), other.size[0]];
    if (left >= x + node.size[0] || left + width <= x || top < bottom) continue;
    room = Math.min(room, top - bottom - GAP_BELOW);
  }
  return Math.max(0, room);
}

const margins = (widget) => 2 * (widget.margin ?? 10);

// The display is laid out (and measurable) only once the frontend has put it on the canvas, which
// can be after onExecuted, and at first without its final width.
function laidOut(node, widget) {
  const width = (widget.width ?? node.size[0]) - margins(widget);
  return widget.esBody.offsetHeight > 0 && Math.abs(widget.element.offsetWidth - width) <= 1;
}

// The widget's height limits, which the frontend's layout reads (computeLayoutSize) on every draw:
// `esContent` is what the display needs, `esFitted` what the last run could give it.
function measure(widget) {
  widget.esContent = Math.min(widget.esBody.offsetHeight, MAX_BOX_HEIGHT) + margins(widget);
  widget.esFitted = Math.min(widget.esFitted, widget.esContent);
}

// After a run: the node grows by what the display needs more than it had, so that the prompt
// keeps its size, as far as there is empty canvas below; short of that the other widgets shrink
// to their minimum, and then the display, which scrolls.
function fitNode(node, widget) {
  const growth = Math.max(0, widget.esContent - (widget.computedHeight ?? margins(widget)));
  widget.esFitted = widget.esContent;
  const needed = node.computeSize();
  const wanted = Math.max(node.size[1] + growth, needed[1]);
  const height = Math.max(node.size[1], Math.min(wanted, node.size[1] + roomBelow(node)));
  const floor = Math.min(widget.esContent, MIN_BOX_HEIGHT + margins(widget));
  widget.esFitted = Math.max(floor, widget.esContent - Math.max(0, needed[1] - height));
  widget.esFitPending = false;
  node.setSize([Math.max(node.size[0], needed[0]), height]);
  node.setDirtyCanvas?.(true, true);
}

function scoreWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (widget) return widget;
  if (typeof node.addDOMWidget !== "function") return null;   // very old frontends: no display
  ensureStyle();
  const el = document.createElement("div");
  el.className = "es-tokens";
  const body = document.createElement("div");
  body.className = "es-body";
  el.appendChild(body);
  widget = node.addDOMWidget(WIDGET, "es_token_scores", el, {
    serialize: false,
    hideOnZoom: false,
    getValue() { return undefined; },
    setValue() {},
    getMinHeight: () => widget.esFitted,
    getMaxHeight: () => widget.esContent,
  });
  widget.serialize = false;          // older frontends read this flag on the widget itself
  widget.element = widget.element ?? el;
  widget.esBody = body;
  widget.esContent = widget.esFitted = margins(widget);     // no height until measured
  // Measured again whenever the node's width changes the wrapping of the tokens.
  new ResizeObserver(() => {
    if (!laidOut(node, widget)) return;
    measure(widget);
    if (widget.esFitPending) fitNode(node, widget);
    node.setDirtyCanvas?.(true, true);
  }).observe(body);
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
        renderScores(widget.esBody, entries);
        widget.esFitPending = true;
        if (laidOut(this, widget)) {
          measure(widget);
          fitNode(this, widget);
        }
      } catch (err) {
        console.warn("[Embedding Sanitizer] could not show token scores", err);
      }
      return result;
    };
  },
});
