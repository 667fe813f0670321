"""Schemathesis hooks for scripts/api-conformance.sh (loaded through SCHEMATHESIS_HOOKS).

Request bodies of the Freshet API are SQL text (`application/sql`). Schemathesis has no serializer
for that media type; it sends them as it sends text/plain: the generated string as UTF-8 bytes.
"""

import schemathesis

schemathesis.serializer.alias("application/sql", "text/plain")
