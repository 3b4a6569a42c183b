// Keyboard shortcuts of the Review page: f = fraud, n = not fraud, s = skip.
// They press the page's own buttons, so a key does exactly what a click does; keys typed
// into a text field (the note, the reviewer's name) are text, never a verdict.
document.addEventListener("keydown", function (event) {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  var target = event.target;
  var tag = target && target.tagName ? target.tagName.toLowerCase() : "";
  if (tag === "input" || tag === "textarea" || tag === "select" || (target && target.isContentEditable)) return;
  var buttons = { f: "review-fraud", n: "review-not-fraud", s: "review-skip" };
  var id = buttons[event.key.toLowerCase()];
  if (!id) return;
  var button = document.getElementById(id);
  if (!button || button.disabled) return;
  event.preventDefault();
  button.click();
});
