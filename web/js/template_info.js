// Embedding Sanitizer: the titles and descriptions of the pack's templates in the template browser.
// ComfyUI lists a pack's example_workflows/*.json by file name only, and the frontend shows that
// name as the title and again, "_" and "-" read as spaces, as the description. Each of our
// workflows carries its own title and description in extra.template; this writes them over the
// file names on the cards and list rows of our templates.
// Served at /extensions/<pack>/js/template_info.js: <pack> is the name the templates are listed under.
import { api } from "../../../scripts/api.js";

const PACK = decodeURIComponent(new URL(import.meta.url).pathname.split("/").at(-3));
const CARD = '[data-testid^="template-workflow-"]';

let infos = null;   // Promise of Map: template name -> {title, description}

function templateInfos() {
  infos ??= (async () => {
    const names = (await api.getWorkflowTemplates())?.[PACK] ?? [];
    const found = await Promise.all(names.map(async (name) => {
      const url = `/workflow_templates/${encodeURIComponent(PACK)}/${encodeURIComponent(name)}.json`;
      const info = (await (await api.fetchApi(url)).json())?.extra?.template;
      return [name, info];
    }));
    return new Map(found.filter(([, info]) => typeof info?.title === "string" && typeof info?.description === "string"));
  })().catch((err) => {
    console.warn("[Embedding Sanitizer] could not read the templates' titles", err);
    return new Map();
  });
  return infos;
}

function leafTexts(root) {
  return [...root.querySelectorAll("*")].filter((el) => !el.children.length && el.textContent.trim());
}

// A card or list row shows a template by its file name when its texts are the name, then the name
// with spaces (the frontend's stand-in description); anything else is left alone. Neither names
// the pack, so a template of another pack with the same file name would be relabelled too: our
// file names say "sanitize".
function relabel(root, name, info) {
  const [title, description] = leafTexts(root);
  if (title?.textContent.trim() !== name) return;
  if (description?.textContent.trim() !== name.replace(/[-_]/g, " ").trim()) return;
  for (const [el, text] of [[title, info.title], [description, info.description]]) {
    el.textContent = text;
    if (el.hasAttribute("title")) el.title = text;
  }
}

async function relabelAll() {
  const cards = [...document.querySelectorAll(CARD)];
  const rows = [...document.querySelectorAll(".p-dialog tr")];
  if (!cards.length && !rows.length) return;
  const known = await templateInfos();
  for (const card of cards) {
    const name = card.dataset.testid.slice("template-workflow-".length);
    if (known.has(name)) relabel(card, name, known.get(name));
  }
  for (const row of rows) {
    const name = leafTexts(row)[0]?.textContent.trim();
    if (known.has(name)) relabel(row, name, known.get(name));
  }
}

let queued = false;
new MutationObserver(() => {
  if (queued) return;
  queued = true;
  requestAnimationFrame(() => {
    queued = false;
    relabelAll();
  });
}).observe(document.body, { childList: true, subtree: true });
