trap 'kill $pid; exit 0' TERM
httpd -f -p 8080 -h /www & pid=$!
wait
