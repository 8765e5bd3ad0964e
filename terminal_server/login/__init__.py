"""Logging in (`--auth pam|oidc`): the login store and its cookie, CSRF, the login page,
logout, throttling, and PAM. See docs/team.md."""
