// The team page's SSH key form: sent to the API like any data-api form, then the page is
// loaded again with the new key's fingerprint (from the API's answer) in ?added=, which the
// server shows beside the list. A fingerprint is no secret; an API key's secret never goes
// in an address (that form uses app.js's data-after="show").

import { bodyOf, callApi, flash } from "/static/app.js";

const form = document.getElementById("add-ssh-key");

form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const key = await callApi("POST", "/api/v1/ssh-keys", bodyOf(form));
    location.assign(`/team?added=${encodeURIComponent(key.fingerprint)}#ssh-keys`);
  } catch (error) {
    flash(error.message, "error");
    button.disabled = false;
  }
});
