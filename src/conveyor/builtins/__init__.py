"""The built-in job types: `noop`, `sleep`, `fail` (`basic`), `files.bundle`, `csv.export`,
`email.send` and `http.request`, and what only they need (the export database and its SQL
check, the template sandbox)."""
