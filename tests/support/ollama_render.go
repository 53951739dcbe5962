// Renders an Ollama TEMPLATE as Ollama's server does for a chat (template.Execute in
// github.com/ollama/ollama/template): Go's text/template over .System and .Messages, after
// Ollama's collation (system messages gathered into .System; consecutive messages of one role
// merged, joined by a blank line). Reads {"template", "system", "messages"} as JSON on stdin,
// where "system" is the Modelfile's SYSTEM, used when no message is a system message.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template string    `json:"template"`
		System   string    `json:"system"`
		Messages []Message `json:"messages"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	msgs := in.Messages
	if in.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]Message{{Role: "system", Content: in.System}}, msgs...)
	}
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	t := template.Must(template.New("").Parse(in.Template))
	data := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": collated, "Tools": nil, "Response": ""}
	if err := t.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
