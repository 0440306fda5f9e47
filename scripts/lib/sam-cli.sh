# shellcheck shell=bash
# The oldest SAM CLI the scripts and the deploy guide work with: 1.161.0 brought
# --language-extensions (and samconfig.toml's language_extensions), which expands the
# template's Fn::ForEach locally for sam build, validate and deploy.
SAM_CLI_MIN_VERSION=1.161.0

# Fails, naming both versions, when `sam` is missing or older than SAM_CLI_MIN_VERSION.
require_sam_cli() {
  local have
  have=$(sam --version 2>/dev/null | sed -n 's/^SAM CLI, version \([0-9][0-9.]*\).*/\1/p')
  if [[ -z $have ]]; then
    echo "SAM CLI not found: install $SAM_CLI_MIN_VERSION or later (pip install aws-sam-cli)" >&2
    return 1
  fi
  if [[ $(printf '%s\n%s\n' "$SAM_CLI_MIN_VERSION" "$have" | sort -V | head -n1) != "$SAM_CLI_MIN_VERSION" ]]; then
    echo "SAM CLI $have is older than $SAM_CLI_MIN_VERSION, which this project needs (--language-extensions)" >&2
    return 1
  fi
}
