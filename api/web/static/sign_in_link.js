// The one-time token travels in the address's fragment, which browsers never send to a server:
// take it, clear it from the address bar and history, and post it once.
const form = document.getElementById("link-form");
const token = location.hash.slice(1);
history.replaceState(null, "", location.pathname);
if (token && !document.getElementById("sign-in-error")) {
  form.elements.token.value = token;
  form.submit();
}
