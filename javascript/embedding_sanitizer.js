// Embedding Sanitizer: refresh the token-score display in the accordion after each generation.
// The webui calls onAfterUiUpdate callbacks after gradio updates; when a new image's
// generation info appears, click the accordion's (hidden-cost) "Show token scores" button.
(function () {
    const last = {txt2img: null, img2img: null};
    onAfterUiUpdate(function () {
        for (const tab of ["txt2img", "img2img"]) {
            const info = gradioApp().querySelector(`#html_info_${tab}`);
            const button = gradioApp().querySelector(`#embedding_sanitizer_${tab}_show`);
            if (!info || !button) continue;
            const text = info.textContent || "";
            if (text && text !== last[tab]) {
                last[tab] = text;
                if (text.includes("Embedding Sanitizer")) button.click();
            }
        }
    });
})();
