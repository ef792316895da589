"""The backend-for-frontend: the browser's OAuth client, keeping every token server-side.

The browser holds one session cookie; the BFF holds the session (claims, tokens, CSRF token) in
the fast-state store, signs the user in with authorization code + PKCE as a confidential client,
and forwards ``/bff/api/*`` to the gateway with the session's access token.
"""
