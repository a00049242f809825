// Copy-to-clipboard for elements marked data-copy="<selector>"; works after htmx swaps too.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
    button.textContent = "Copied";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
});

// Selects marked data-submit-on-change submit their form when changed: requestSubmit(), so a
// boosted form goes through htmx, or form.submit() (a full page load) where the value is
// "page". The Content-Security-Policy allows no inline handlers (onchange="...").
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-submit-on-change]");
  if (!select || !select.form) return;
  if (select.dataset.submitOnChange === "page") select.form.submit();
  else select.form.requestSubmit();
});

// A boosted link or form answered with an error page (403: the organisation is suspended or
// the CSRF token went stale; 404; 400; 500): htmx swaps nothing for a 4xx or 5xx, so in
// production the click seemed to do nothing (django-htmx shows them only under DEBUG). Show
// the page, as a browser without htmx would.
document.addEventListener("htmx:beforeSwap", (event) => {
  const detail = event.detail;
  if (detail.boosted && detail.xhr.status >= 400) {
    detail.shouldSwap = true;
    detail.isError = false;
  }
});

// A refusal is said in the messages at the top of the page. A form that scrolls the page to
// its own section once answered (hx-swap "show:#aliases:top") left it out of sight, as if
// nothing had happened: bring it into view, and focus it for screen readers.
// (After htmx's own scroll, which comes once the settle's events have run.)
document.addEventListener("htmx:afterSettle", () => {
  setTimeout(() => {
    const refusal = document.querySelector("main .messages .error");
    if (!refusal || refusal.dataset.shown) return;
    refusal.dataset.shown = "1";
    refusal.setAttribute("tabindex", "-1");
    refusal.scrollIntoView({ block: "center" });
    refusal.focus({ preventScroll: true });
  }, 0);
});
