#!/usr/bin/env bash
# Passes `go test -v` output through and ends with one plain line
# "N passed, N failed, N skipped" so CI logs say what ran. Keeps go test's
# exit status.
set -o pipefail
pass=0; fail=0; skip=0
while IFS= read -r line; do
	printf '%s\n' "$line"
	# Subtests are indented; count them too.
	case "${line#"${line%%[![:space:]]*}"}" in
		"--- PASS: "*) pass=$((pass+1)) ;;
		"--- FAIL: "*) fail=$((fail+1)) ;;
		"--- SKIP: "*) skip=$((skip+1)) ;;
	esac
done
echo "integration: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
