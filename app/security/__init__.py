"""Authorization: SMART access tokens (JWT, introspection), scopes, the authorizer, SMART discovery documents."""
