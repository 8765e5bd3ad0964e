// The login page: the form posts by itself (no script needed); this only keeps a second
// click from posting it twice while the server checks the password.
"use strict";
(() => {
  const form = document.getElementById("login-form");
  const submit = document.getElementById("submit");
  if (document.getElementById("user").value) document.getElementById("password").focus();
  form.addEventListener("submit", () => {
    submit.disabled = true;
    submit.textContent = "Logging in…";
  });
})();
