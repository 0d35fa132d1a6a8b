// The one-time token travels in the address's fragment, which browsers never send to a server:
// take it into the form and clear it from the address bar and history. It is posted only on a
// click: a link someone else made must not quietly sign this browser in as them.
const form = document.getElementById("link-form");
const token = location.hash.slice(1);
history.replaceState(null, "", location.pathname);
if (token) {
  form.elements.token.value = token;
  document.getElementById("use-link").disabled = false;
}
