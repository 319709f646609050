// Embedding Sanitizer: after every generation, the accordion shows what happened to THAT
// generation: sanitized (its token scores), not sanitized (and why) or refused.
// The page sends its own result (the generation info JSON and the log area's text, where
// the webui writes comments and errors) to the server, which answers with the display for
// it; nothing is kept per server process, so other users' prompts are never shown.
(function () {
    const seen = {txt2img: null, img2img: null};
    onAfterUiUpdate(function () {
        for (const tab of ["txt2img", "img2img"]) {
            const request = gradioApp().querySelector(`#embedding_sanitizer_${tab}_request textarea`);
            const button = gradioApp().querySelector(`#embedding_sanitizer_${tab}_show`);
            if (!request || !button) continue;
            const infoBox = gradioApp().querySelector(`#generation_info_${tab} textarea`);
            const logArea = gradioApp().querySelector(`#html_log_${tab}`);
            const info = infoBox ? infoBox.value : "";
            const log = logArea ? (logArea.innerText || logArea.textContent || "") : "";
            const signature = JSON.stringify({info: info, log: log});
            if (signature === seen[tab]) continue;
            seen[tab] = signature;
            request.value = signature;
            updateInput(request);
            button.click();
        }
    });
})();
