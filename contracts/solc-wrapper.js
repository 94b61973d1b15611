#!/usr/bin/env node
// A native-solc-compatible front for solc-js (the npm `solc` package: the official compiler
// built to WebAssembly), so that py-solc-x can use it as `solc_binary`.
//
//   solc-wrapper.js --version          prints the version in native solc's format
//   solc-wrapper.js --standard-json    reads Standard JSON input on stdin, writes only the
//                                      Standard JSON output on stdout
//
// `solcjs --standard-json` prints a stray line before the JSON, which py-solc-x cannot
// parse; this wrapper prints nothing else. Imports are resolved from the directory given
// by --base-path or --allow-paths (py-solc-x passes them), else the working directory.
'use strict';

const fs = require('fs');
const path = require('path');

function loadSolc() {
  const candidates = [
    path.join(__dirname, '..', 'node_modules', 'solc'),
    'solc',
  ];
  for (const candidate of candidates) {
    try {
      return require(candidate);
    } catch (error) {
      if (error.code !== 'MODULE_NOT_FOUND') throw error;
    }
  }
  process.stderr.write('solc-wrapper: the npm package solc is not installed; run scripts/bootstrap.sh\n');
  process.exit(2);
}

function optionValue(args, name) {
  const index = args.indexOf(name);
  if (index >= 0 && index + 1 < args.length) return args[index + 1];
  const prefixed = args.find((arg) => arg.startsWith(name + '='));
  return prefixed ? prefixed.slice(name.length + 1) : undefined;
}

function main() {
  const args = process.argv.slice(2);
  const solc = loadSolc();
  if (args.includes('--version')) {
    // Native solc: "solc, the solidity compiler commandline interface\nVersion: X".
    process.stdout.write(
      'solc, the solidity compiler commandline interface\nVersion: ' + solc.version() + '\n',
    );
    return;
  }
  if (!args.includes('--standard-json')) {
    process.stderr.write('usage: solc-wrapper.js --version | --standard-json < input.json\n');
    process.exit(2);
  }
  const roots = [optionValue(args, '--base-path'), optionValue(args, '--allow-paths'), process.cwd()]
    .filter(Boolean)
    .flatMap((value) => value.split(','));
  const findImports = (importPath) => {
    for (const root of roots) {
      const candidate = path.resolve(root, importPath);
      if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, 'utf8') };
    }
    return { error: 'File not found: ' + importPath };
  };
  const input = fs.readFileSync(0, 'utf8');
  process.stdout.write(solc.compile(input, { import: findImports }));
}

main();
