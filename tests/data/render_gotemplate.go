// Renders Go text/template cases for tests/test_export.py: reads a JSON list of
// {"template": ..., "data": ...} from stdin, writes a JSON list of rendered strings
// (or {"error": ...}) to stdout. Only the standard library.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type testCase struct {
	Template string                 `json:"template"`
	Data     map[string]interface{} `json:"data"`
}

func main() {
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := make([]interface{}, 0, len(cases))
	for _, c := range cases {
		t, err := template.New("t").Parse(c.Template)
		if err != nil {
			out = append(out, map[string]string{"error": err.Error()})
			continue
		}
		var b strings.Builder
		if err := t.Execute(&b, c.Data); err != nil {
			out = append(out, map[string]string{"error": err.Error()})
			continue
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
