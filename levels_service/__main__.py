from levels_service.server import serve

serve()
