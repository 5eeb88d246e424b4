#!/bin/sh
# Refresh the browser files that /ui/, /docs and /redoc serve (src/inferserver/web/static/vendor/) from npm.
#
# The files are vendored (committed, with their licences) so a clone, the wheel and the Docker image serve them
# with no Node.js and no network. Run this after changing a version in web/package.json, then commit both the
# lockfile and vendor/. Needs node and npm; reaches the npm registry (or the mirror npm is configured for).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
web="$root/web"
vendor="$root/src/inferserver/web/static/vendor"

cd "$web"
if [ -f package-lock.json ]; then
    npm ci --ignore-scripts --no-audit --no-fund   # exactly the locked versions; no install scripts run
else
    npm install --ignore-scripts --no-audit --no-fund
fi

modules="$web/node_modules"
rm -rf "$vendor"
mkdir -p "$vendor/niivue" "$vendor/swagger-ui" "$vendor/redoc"

# NiiVue's UMD build: one self-contained file that defines window.niivue. Its npm package ships no LICENSE file,
# so the licence text (BSD-2-Clause, from the niivue repository) is kept in web/licenses/.
cp "$modules/@niivue/niivue/dist/niivue.umd.js" "$vendor/niivue/"
cp "$web/licenses/niivue-LICENSE" "$vendor/niivue/LICENSE"

cp "$modules/swagger-ui-dist/swagger-ui-bundle.js" "$modules/swagger-ui-dist/swagger-ui.css" \
    "$modules/swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt" "$modules/swagger-ui-dist/LICENSE" \
    "$modules/swagger-ui-dist/NOTICE" "$vendor/swagger-ui/"
cp "$modules/swagger-ui-dist/favicon-32x32.png" "$vendor/swagger-ui/favicon.png"

cp "$modules/redoc/bundles/redoc.standalone.js" "$modules/redoc/bundles/redoc.standalone.js.LICENSE.txt" \
    "$modules/redoc/LICENSE" "$vendor/redoc/"
# Redoc's sidebar footer loads its logo from a CDN (an <img> it hides when the load fails). Offline, nothing may
# be fetched from outside: an empty data: URL fails at once, locally, and the footer keeps its text link.
logo='https://cdn.redoc.ly/redoc/logo-mini.svg'
grep -q "$logo" "$vendor/redoc/redoc.standalone.js" || { echo "redoc: its CDN logo URL moved; update this script" >&2; exit 1; }
sed -i "s|$logo|data:,|" "$vendor/redoc/redoc.standalone.js"

# The versions served, for the README and for anyone auditing the vendored files.
node -e '
const lock = require(process.argv[1]).packages;
for (const name of ["@niivue/niivue", "swagger-ui-dist", "redoc"]) {
  const p = lock["node_modules/" + name];
  console.log(`${name} ${p.version} ${p.license || ""} ${p.integrity}`);
}' "$web/package-lock.json" > "$vendor/VERSIONS"
cat "$vendor/VERSIONS"
