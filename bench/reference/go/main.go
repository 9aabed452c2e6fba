// The stdlib Go net/http "Hello World!" that `cargo xtask bench` measures against: the shape of the
// Go services (hello-app, podinfo, whoami) that are this service's rivals, with nothing added.
package main

import (
	"log"
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("Hello World!"))
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}
