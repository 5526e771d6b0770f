from xp_service.server import serve

serve()
